"""The SQLite log's file format: one ``chunk`` row per transaction, and tools that read it.

Each transaction writes one row holding all its records (their keys, dedupe keys, dedupe
hashes and payloads) under the offset of its first record; the records of a chunk have
consecutive offsets. A row per record cost a B-tree insert per event; a row per transaction
costs one. ``hashes`` holds each record's xxh3 dedupe hash as native uint64 (0: no dedupe
key), from which the dedupe index is rebuilt at start; the three lists are msgpack arrays.

``iter_records`` and ``count_records`` read a file with nothing but ``sqlite3`` (for tools
and tests); ``SELECT sum(count) FROM chunk`` counts the records from the ``sqlite3`` shell.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple, overload

import msgspec

from personify.eventlog.base import AppendResult, LogEntry, LogRecord

# hashes come before the packed lists so that reading them (catching up on another writer's
# chunks, loading the index) never touches the overflow pages that hold the payloads
SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    first_offset INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    appended_at REAL NOT NULL,
    hashes BLOB NOT NULL,
    keys BLOB NOT NULL,
    dedupe_keys BLOB NOT NULL,
    payloads BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_appended_at ON chunk (appended_at);
CREATE TABLE IF NOT EXISTS log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_offset INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_head (id, next_offset) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS consumer_groups (
    name TEXT PRIMARY KEY,
    committed INTEGER NOT NULL
);
-- offsets whose record an erasure removed (the gaps in the otherwise consecutive offsets)
CREATE TABLE IF NOT EXISTS erased_offset (
    "offset" INTEGER PRIMARY KEY
);
"""

Columns = tuple[bytes, bytes, bytes]

pack = msgspec.msgpack.Encoder().encode
unpack_dedupe_keys = msgspec.msgpack.Decoder(list[str | None]).decode
_unpack_keys = msgspec.msgpack.Decoder(list[str]).decode
_unpack_payloads = msgspec.msgpack.Decoder(list[bytes]).decode

# tuple.__new__ builds the NamedTuple without running its Python __new__ (once per record)
_new_result: Callable[[tuple[str, bool]], AppendResult] = functools.partial(
    tuple.__new__, AppendResult
)


class Chunk(NamedTuple):
    """A chunk's records, unpacked."""

    first_offset: int
    appended_at: float
    keys: list[str]
    payloads: list[bytes]

    def entry(self, index: int) -> LogEntry:
        """The chunk's ``index``-th record as a log entry."""
        return LogEntry(
            0,
            str(self.first_offset + index),
            self.keys[index],
            self.payloads[index],
            self.appended_at,
        )


def unpack(row: tuple[Any, ...]) -> Chunk:
    """A chunk from a row of (first_offset, appended_at, keys, payloads)."""
    first_offset, appended_at, keys, payloads = row
    return Chunk(
        int(first_offset), float(appended_at), _unpack_keys(keys), _unpack_payloads(payloads)
    )


def pack_columns(records: Sequence[LogRecord]) -> Columns:
    """The records' keys, dedupe keys and payloads, each list packed with msgpack."""
    return (
        pack([r.key for r in records]),
        pack([r.dedupe_key for r in records]),
        pack([r.payload for r in records]),
    )


class FreshResults(Sequence[AppendResult]):
    """The results of ``count`` records appended (none a duplicate) from ``first_offset`` on,
    each made when asked for: a batch request only wants ``duplicates`` (see
    ``count_duplicates``), and an ``AppendResult`` per record cost more than the rest of the
    commit's per-record work."""

    __slots__ = ("_count", "_first")

    duplicates = 0

    def __init__(self, first_offset: int, count: int) -> None:
        self._first = first_offset
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> AppendResult: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AppendResult]: ...

    def __getitem__(self, index: int | slice) -> AppendResult | Sequence[AppendResult]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step == 1:
                return FreshResults(self._first + start, max(0, stop - start))
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return _new_result((str(self._first + index), False))

    def __iter__(self) -> Iterator[AppendResult]:
        offsets = map(str, range(self._first, self._first + self._count))
        return map(_new_result, zip(offsets, repeat(False)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FreshResults):
            return (self._first, self._count) == (other._first, other._count)
        return isinstance(other, Sequence) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash((self._first, self._count))

    def __repr__(self) -> str:
        return f"FreshResults(first_offset={self._first}, count={self._count})"


def insert_chunk(
    conn: sqlite3.Connection,
    first_offset: int,
    count: int,
    appended_at: float,
    hashes: bytes,
    columns: Columns,
) -> None:
    """Insert one chunk row (``columns``: its packed keys, dedupe keys and payloads) and move
    the head past it."""
    keys, dedupe_keys, payloads = columns
    conn.execute(
        "INSERT INTO chunk (first_offset, count, appended_at, hashes, keys, dedupe_keys, "
        "payloads) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (first_offset, count, appended_at, hashes, keys, dedupe_keys, payloads),
    )
    conn.execute("UPDATE log_head SET next_offset = ?", (first_offset + count,))


def stored_dedupe_keys(conn: sqlite3.Connection, offsets: list[int]) -> dict[int, str | None]:
    """The dedupe key stored at each offset (ascending); missing chunks are left out."""
    found: dict[int, str | None] = {}
    chunk_first = -1
    chunk_keys: list[str | None] = []
    for offset in offsets:
        if not chunk_first <= offset < chunk_first + len(chunk_keys):
            row = conn.execute(
                "SELECT first_offset, dedupe_keys FROM chunk WHERE first_offset <= ? "
                "ORDER BY first_offset DESC LIMIT 1",
                (offset,),
            ).fetchone()
            if row is None:
                continue
            chunk_first, chunk_keys = int(row[0]), unpack_dedupe_keys(row[1])
        if chunk_first <= offset < chunk_first + len(chunk_keys):
            found[offset] = chunk_keys[offset - chunk_first]
    return found


def delete_committed(
    conn: sqlite3.Connection, *, appended_before: float | None = None, max_chunks: int = 0
) -> tuple[int, bool]:
    """Delete chunks every known group has committed in full (and, with ``appended_before``,
    appended before that epoch time); at most ``max_chunks`` of them when it is positive.
    Returns how many records went, and whether more such chunks are left."""
    floor = conn.execute("SELECT min(committed) FROM consumer_groups").fetchone()[0]
    if floor is None:
        return 0, False
    condition = "first_offset + count - 1 <= ?"
    params: list[object] = [floor]
    if appended_before is not None:
        condition += " AND appended_at < ?"
        params.append(appended_before)
    limit = f" ORDER BY first_offset LIMIT {int(max_chunks)}" if max_chunks > 0 else ""
    rows = conn.execute(
        f"SELECT first_offset, count FROM chunk WHERE {condition}{limit}", params
    ).fetchall()
    if not rows:
        return 0, False
    conn.execute(
        f"DELETE FROM chunk WHERE first_offset IN (SELECT first_offset FROM chunk "
        f"WHERE {condition}{limit})",
        params,
    )
    return sum(int(count) for _, count in rows), max_chunks > 0 and len(rows) == max_chunks


def erase_from_chunk(conn: sqlite3.Connection, first_offset: int, doomed: set[int]) -> int:
    """Remove the records at ``doomed`` offsets from the chunk at ``first_offset``, in the
    caller's transaction; how many went.

    The other records keep their offsets (consumer groups' commits refer to them): the chunk
    is replaced by one chunk per run of kept records, and each removed offset is noted in
    ``erased_offset`` so ``lag`` does not count the gap.
    """
    row = conn.execute(
        "SELECT count, appended_at, hashes, keys, dedupe_keys, payloads FROM chunk "
        "WHERE first_offset = ?",
        (first_offset,),
    ).fetchone()
    if row is None:
        return 0  # truncated meanwhile
    count, appended_at, hashes, keys, dedupe_keys, payloads = row
    count = int(count)
    gone = sorted(o - first_offset for o in doomed if 0 <= o - first_offset < count)
    if not gone:
        return 0
    unpacked = (_unpack_keys(keys), unpack_dedupe_keys(dedupe_keys), _unpack_payloads(payloads))
    conn.execute("DELETE FROM chunk WHERE first_offset = ?", (first_offset,))
    runs: list[tuple[int, int]] = []
    start = 0
    for index in [*gone, count]:
        if index > start:
            runs.append((start, index))
        start = index + 1
    for begin, end in runs:
        conn.execute(
            "INSERT INTO chunk (first_offset, count, appended_at, hashes, keys, dedupe_keys, "
            "payloads) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                first_offset + begin,
                end - begin,
                appended_at,
                bytes(hashes[begin * 8 : end * 8]),
                pack(unpacked[0][begin:end]),
                pack(unpacked[1][begin:end]),
                pack(unpacked[2][begin:end]),
            ),
        )
    conn.executemany(
        'INSERT OR IGNORE INTO erased_offset ("offset") VALUES (?)',
        [(first_offset + index,) for index in gone],
    )
    return len(gone)


def iter_records(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """Every record in the log file at ``path``, oldest first, as (offset, key, payload)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        rows = conn.execute(
            "SELECT first_offset, appended_at, keys, payloads FROM chunk ORDER BY first_offset"
        )
        for row in rows:
            chunk = unpack(row)
            for index, (key, payload) in enumerate(zip(chunk.keys, chunk.payloads, strict=True)):
                yield chunk.first_offset + index, key, payload


def count_records(path: Path) -> int:
    """How many records the log file at ``path`` holds."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        return int(conn.execute("SELECT coalesce(sum(count), 0) FROM chunk").fetchone()[0])
