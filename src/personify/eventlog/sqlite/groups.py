"""The SQLite log's read side: consumer groups, their positions and commits, lag, truncation.

Reads run on worker threads with their own connections (a reader, and a "committer" for
the small write transactions of commits and truncation), never on the event loop's writer.
A group's committed offset is a row of ``consumer_groups``; a consumer's position is kept in
memory and starts at its group's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from personify.errors import BackendUnavailable
from personify.eventlog.base import EraseReport, LogEntry
from personify.eventlog.sqlite.chunks import Chunk, delete_committed, erase_from_chunk, unpack

_T = TypeVar("_T")
_POLL_INTERVAL_S = 0.05
# chunks deleted per truncate transaction: each holds the file's write lock only briefly
_TRUNCATE_CHUNKS = 256
# chunks read per step of an erasure's scan, and rewritten per transaction
_ERASE_CHUNKS = 64
# how long an erasure waits for readers so that it can empty the WAL of the erased records
_WAL_TRUNCATE_WAIT_S = 5.0


class ConsumerGroups:
    """Reads, commits, lag, truncation and tail of one log file."""

    def __init__(self, reader: sqlite3.Connection, committer: sqlite3.Connection) -> None:
        self._reader = reader
        self._reader_lock = threading.Lock()
        self._committer = committer
        self._committer_lock = threading.Lock()
        self._cursors: dict[tuple[str, str], int] = {}
        # set by the writer after each commit: wakes readers of this process early
        self.appended = asyncio.Event()
        # the last chunk a reader unpacked: consumers read a big chunk in several steps
        self._read_cache: Chunk | None = None

    def close(self) -> None:
        """Close the connections (the reader last: see ``SQLiteEventLog.close``)."""
        self._committer.close()
        self._reader.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._reader_lock:
                return list(self._reader.execute(sql, params))
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"the event log could not be read: {exc}", code="log_unavailable"
            ) from exc

    def _in_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` in one write transaction on the committer connection."""
        conn = self._committer
        try:
            with self._committer_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return result
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"the event log could not be written: {exc}", code="log_unavailable"
            ) from exc

    def _committed(self, group: str) -> int:
        rows = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
        if rows:
            return int(rows[0][0])
        self._in_transaction(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO consumer_groups (name, committed) VALUES (?, 0)", (group,)
            )
        )
        return 0

    def _chunks_from(self, position: int, max_count: int) -> list[Chunk]:
        """Chunks holding the records after ``position``, enough for ``max_count`` of them."""
        wanted = position + 1
        cached = self._read_cache
        if cached is not None and cached.first_offset <= wanted < (
            cached.first_offset + len(cached.payloads)
        ):
            chunks = [cached]
            start = cached.first_offset + len(cached.payloads)
        else:
            chunks = []
            # the chunk holding ``wanted``, or the first one after it
            rows = self._query(
                "SELECT first_offset, count FROM chunk WHERE first_offset <= ? "
                "ORDER BY first_offset DESC LIMIT 1",
                (wanted,),
            )
            start = 0
            if rows:
                first, count = int(rows[0][0]), int(rows[0][1])
                start = first if first + count > wanted else first + count
        have = sum(len(c.payloads) for c in chunks)
        while have < max_count:
            # chunks hold at least one record each, so this many always suffice
            rows = self._query(
                "SELECT first_offset, appended_at, keys, payloads FROM chunk "
                "WHERE first_offset >= ? ORDER BY first_offset LIMIT ?",
                (start, min(max_count - have, 64)),
            )
            if not rows:
                break
            for row in rows:
                chunk = unpack(row)
                chunks.append(chunk)
                have += len(chunk.payloads)
            start = chunks[-1].first_offset + len(chunks[-1].payloads)
        if chunks:
            self._read_cache = chunks[-1]
        return chunks

    def _read_sync(self, group: str, consumer: str, max_count: int) -> list[LogEntry]:
        cursor_key = (group, consumer)
        position = self._cursors.get(cursor_key)
        if position is None:
            position = self._committed(group)
        entries: list[LogEntry] = []
        for chunk in self._chunks_from(position, max_count):
            skip = max(0, position + 1 - chunk.first_offset)
            take = min(len(chunk.payloads), skip + max_count - len(entries))
            entries.extend(chunk.entry(index) for index in range(skip, take))
            if len(entries) >= max_count:
                break
        self._cursors[cursor_key] = int(entries[-1].offset) if entries else position
        return entries

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """Entries after this consumer's position (its group's commit on first read)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            self.appended.clear()
            entries = await asyncio.to_thread(self._read_sync, group, consumer, max_count)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            # woken early by an append in this process; appends by others are polled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.appended.wait(), timeout=min(remaining, _POLL_INTERVAL_S)
                )

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Move the group's committed offset forward to the highest entry given."""
        if not entries:
            return
        highest = max(int(e.offset) for e in entries)
        await asyncio.to_thread(
            self._in_transaction,
            lambda conn: conn.execute(
                "INSERT INTO consumer_groups (name, committed) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET committed = MAX(committed, excluded.committed)",
                (group, highest),
            ),
        )

    def _bounds(self) -> tuple[int, int]:
        """The first offset still stored and the offset the next record will get."""
        rows = self._query(
            "SELECT (SELECT min(first_offset) FROM chunk), (SELECT next_offset FROM log_head)"
        )
        first, head = rows[0]
        head = int(head)
        return (int(first) if first is not None else head), head

    async def lag(self, group: str) -> int:
        """Records after the group's committed offset."""

        def count() -> int:
            # looking at a group must not register it: an unknown group would hold back truncate
            known = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
            committed = int(known[0][0]) if known else 0
            first, head = self._bounds()
            start = max(committed + 1, first)
            # offsets are consecutive from the first stored record to the head, but for the
            # records an erasure removed
            gaps = self._query('SELECT count(*) FROM erased_offset WHERE "offset" >= ?', (start,))[
                0
            ][0]
            return max(0, head - start - int(gaps))

        return await asyncio.to_thread(count)

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Delete the chunks whose every record all known groups have committed and that
        were appended more than ``retention_s`` before ``now`` (epoch seconds; the time by
        default), a bounded number of chunks per transaction so appends are never held up
        for long; returns how many records went."""
        cutoff = (time.time() if now is None else now) - retention_s
        trim = functools.partial(
            delete_committed, appended_before=cutoff, max_chunks=_TRUNCATE_CHUNKS
        )
        removed = 0
        while True:
            gone, more = await asyncio.to_thread(self._in_transaction, trim)
            removed += gone
            if not more:
                return removed

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""

        def newest() -> list[LogEntry]:
            entries: list[LogEntry] = []
            before = sys.maxsize
            while len(entries) < limit:
                rows = self._query(
                    "SELECT first_offset, appended_at, keys, payloads FROM chunk "
                    "WHERE first_offset < ? ORDER BY first_offset DESC LIMIT 16",
                    (before,),
                )
                if not rows:
                    break
                for row in rows:
                    chunk = unpack(row)
                    entries.extend(
                        chunk.entry(index) for index in range(len(chunk.payloads) - 1, -1, -1)
                    )
                    before = chunk.first_offset
                    if len(entries) >= limit:
                        break
            return list(reversed(entries[:limit]))

        return await asyncio.to_thread(newest)

    async def erase(
        self, match: Callable[[LogEntry], bool], *, dry_run: bool = False
    ) -> EraseReport:
        """Remove every record ``match`` is true for (see ``chunks.erase_from_chunk``).

        The scan reads a few chunks at a time, so consumers are held up only briefly; each
        affected chunk is rewritten in a short write transaction. The connection that
        rewrites has ``secure_delete`` on, so the freed pages are zeroed, and the WAL is then
        checkpointed and truncated, so no old copy of the records stays in either file.
        """
        found = await asyncio.to_thread(self._matching, match)
        if dry_run or not found:
            return EraseReport(0, tuple(f"0:{o}" for c in found.values() for o in sorted(c)))
        removed = 0
        firsts = sorted(found)
        for start in range(0, len(firsts), _ERASE_CHUNKS):
            step = firsts[start : start + _ERASE_CHUNKS]

            def rewrite(conn: sqlite3.Connection, step: list[int] = step) -> int:
                return sum(erase_from_chunk(conn, first, found[first]) for first in step)

            removed += await asyncio.to_thread(self._erasing, rewrite)
        # a reader may hold an unpacked copy of a rewritten chunk
        self._read_cache = None
        clean = await asyncio.to_thread(self._empty_wal)
        if clean:
            return EraseReport(removed)
        return EraseReport(
            removed,
            reason="readers kept the write-ahead log busy: old copies of the erased records "
            "stay in it until its next checkpoint",
        )

    def _matching(self, match: Callable[[LogEntry], bool]) -> dict[int, set[int]]:
        """The offsets ``match`` is true for, by the first offset of their chunk."""
        found: dict[int, set[int]] = {}
        after = -1
        while True:
            rows = self._query(
                "SELECT first_offset, appended_at, keys, payloads FROM chunk "
                "WHERE first_offset > ? ORDER BY first_offset LIMIT ?",
                (after, _ERASE_CHUNKS),
            )
            if not rows:
                return found
            for row in rows:
                chunk = unpack(row)
                hits = {
                    chunk.first_offset + index
                    for index in range(len(chunk.payloads))
                    if match(chunk.entry(index))
                }
                if hits:
                    found[chunk.first_offset] = hits
            after = int(rows[-1][0])

    def _erasing(self, work: Callable[[sqlite3.Connection], int]) -> int:
        with self._committer_lock:
            self._committer.execute("PRAGMA secure_delete=ON")
        try:
            return self._in_transaction(work)
        finally:
            with self._committer_lock:
                self._committer.execute("PRAGMA secure_delete=OFF")

    def _empty_wal(self) -> bool:
        """Checkpoint the WAL and truncate it to nothing; whether that succeeded."""
        deadline = time.monotonic() + _WAL_TRUNCATE_WAIT_S
        while True:
            try:
                with self._committer_lock:
                    busy = self._committer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise BackendUnavailable(
                    f"the event log could not be checkpointed: {exc}", code="log_unavailable"
                ) from exc
            if busy is None or int(busy[0]) == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
