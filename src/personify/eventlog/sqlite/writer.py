"""What one group commit of the SQLite log writes, and the dedupe state it keeps.

A commit takes the records of every append queued since the last one, finds which are
duplicates (the dedupe index, every hit confirmed against the stored key), and writes the
rest as one chunk. Several processes may share one file: a writer, once it holds the write
lock, first indexes the chunks other writers appended since its last commit.

The dedupe window becomes an offset floor through marks: (time, offset) pairs noted at most
once a ``mark_every_s``; the index forgets offsets below the first mark older than the
window.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from personify.eventlog.base import AppendResult, LogRecord
from personify.eventlog.sqlite.chunks import (
    FreshResults,
    insert_chunk,
    pack,
    pack_columns,
    stored_dedupe_keys,
)
from personify.eventlog.sqlite.dedupe import DedupeIndex, hash_array, hash_values

# one (time, offset) mark per this many seconds (at most) maps the dedupe window onto offsets
_WINDOW_MARK_EVERY_S = 1.0
# entries indexed at a time while loading the index
_LOAD_ENTRIES = 262_144


class Pending(Protocol):
    """An append waiting for its commit: its records, and the results a commit fills in."""

    records: Sequence[LogRecord]
    results: Sequence[AppendResult]


class ChunkWriter:
    """Writes batches of appends as chunks, deduplicated within the window."""

    def __init__(self, *, dedupe_window_s: float, memory_bytes: int, spill_folder: Path) -> None:
        self._window_s = dedupe_window_s
        self._memory_bytes = memory_bytes
        self._spill_folder = spill_folder
        self.index = DedupeIndex(memory_bytes=memory_bytes, spill_folder=spill_folder)
        self.next_offset = 1
        self._marks: deque[tuple[float, int]] = deque()
        self._last_mark = (0.0, 0)
        self._mark_every_s = min(_WINDOW_MARK_EVERY_S, dedupe_window_s / 10)

    def load(self, conn: sqlite3.Connection) -> None:
        """Fill the dedupe index from the chunks appended within the window."""
        self.index.close()
        self.index = DedupeIndex(memory_bytes=self._memory_bytes, spill_folder=self._spill_folder)
        self._marks.clear()
        self._last_mark = (0.0, 0)
        cutoff = time.time() - self._window_s
        self.next_offset = int(conn.execute("SELECT next_offset FROM log_head").fetchone()[0])
        first = conn.execute(
            "SELECT min(first_offset) FROM chunk WHERE appended_at >= ?", (cutoff,)
        ).fetchone()[0]
        # everything before the window's first chunk has expired
        self.index.expire(int(first) if first is not None else self.next_offset)
        if first is None:
            return
        rows = conn.execute(
            "SELECT first_offset, count, appended_at, hashes FROM chunk "
            "WHERE first_offset >= ? ORDER BY first_offset",
            (int(first),),
        )
        # in steps, so that loading a big window never holds all its hashes at once
        batch: list[tuple[Any, ...]] = []
        entries = 0
        for row in rows:
            batch.append(row)
            entries += int(row[1])
            if entries >= _LOAD_ENTRIES:
                self.absorb(batch)
                batch, entries = [], 0
        self.absorb(batch)

    def absorb(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Index chunks (first_offset, count, appended_at, hashes) written elsewhere."""
        if not rows:
            return
        hashes = np.concatenate([hash_array(row[3]) for row in rows])
        offsets = np.concatenate(
            [np.arange(int(row[0]), int(row[0]) + int(row[1]), dtype=np.int64) for row in rows]
        )
        self.index.add_many(hashes, offsets)
        for first_offset, count, appended_at, _hashes in rows:
            self.mark(float(appended_at), int(first_offset) + int(count))

    def mark(self, appended_at: float, end_offset: int) -> None:
        """Note that every offset below ``end_offset`` was appended by ``appended_at``."""
        self._last_mark = (appended_at, end_offset)
        if not self._marks or appended_at - self._marks[-1][0] >= self._mark_every_s:
            self._marks.append(self._last_mark)

    def expire(self, now: float) -> None:
        """Move the index's floor past every offset appended before the window began.

        The floor trails the window by at most one mark interval, so a key is deduplicated
        for at least the window.
        """
        cutoff = now - self._window_s
        marks = self._marks
        while len(marks) > 1 and marks[1][0] < cutoff:
            marks.popleft()
        floor = marks[0][1] if marks and marks[0][0] < cutoff else None
        if self._last_mark[0] < cutoff:
            floor = self._last_mark[1]
        if floor is not None:
            self.index.expire(floor)

    def committed(self, added: tuple[int, int, bytes] | None, now: float) -> None:
        """Tell the index of a chunk once its transaction has committed."""
        if added is not None:
            first_offset, count, hashes = added
            self.index.add_run(hashes, first_offset)
            self.next_offset = first_offset + count
            self.mark(now, first_offset + count)

    def _catch_up(self, conn: sqlite3.Connection) -> int:
        """Index what other writers appended since this one last wrote; the next offset."""
        head = int(conn.execute("SELECT next_offset FROM log_head").fetchone()[0])
        if head != self.next_offset:
            rows = conn.execute(
                "SELECT first_offset, count, appended_at, hashes FROM chunk "
                "WHERE first_offset >= ? ORDER BY first_offset",
                (self.next_offset,),
            ).fetchall()
            self.absorb(rows)
            self.next_offset = head
        return head

    def write(
        self,
        conn: sqlite3.Connection,
        batch: Sequence[Pending],
        records: list[LogRecord],
        hashes: bytes,
        now: float,
    ) -> tuple[tuple[int, int, bytes] | None, int]:
        """Write the batch as one chunk, in the caller's transaction, filling each pending
        append's results. Returns ((first offset, count, hashes) or None if all were
        duplicates, payload bytes written); ``hashes`` are the records' dedupe hashes."""
        first_offset = self._catch_up(conn)
        self.expire(now)
        if not self.index.probe(hashes):
            # the usual chunk: no dedupe key seen before or twice in it, so every record is
            # appended, in one pass each, not record by record
            fresh = FreshResults(first_offset, len(records))
            start = 0
            for item in batch:
                end = start + len(item.records)
                item.results = fresh[start:end] if len(batch) > 1 else fresh
                start = end
            columns = pack_columns(records)
            insert_chunk(conn, first_offset, len(records), now, hashes, columns)
            return (first_offset, len(records), hashes), len(columns[2])
        digests = {
            record.dedupe_key: digest
            for record, digest in zip(records, hash_values(hashes), strict=True)
            if record.dedupe_key is not None
        }
        known = self._known_offsets(conn, digests)
        next_offset = first_offset
        keys: list[str] = []
        payloads: list[bytes] = []
        dedupe_keys: list[str | None] = []
        kept: array[int] = array("Q")  # the hashes of the records appended
        for item in batch:
            results: list[AppendResult] = []
            item.results = results
            for record in item.records:
                dedupe_key = record.dedupe_key
                if dedupe_key is not None:
                    seen = known.get(dedupe_key)
                    if seen is not None:
                        results.append(AppendResult(str(seen), True))
                        continue
                    known[dedupe_key] = next_offset
                    kept.append(digests[dedupe_key])
                else:
                    kept.append(0)
                keys.append(record.key)
                payloads.append(record.payload)
                dedupe_keys.append(dedupe_key)
                results.append(AppendResult(str(next_offset), False))
                next_offset += 1
        if next_offset == first_offset:
            return None, 0
        packed = (pack(keys), pack(dedupe_keys), pack(payloads))
        insert_chunk(conn, first_offset, len(keys), now, kept.tobytes(), packed)
        return (first_offset, len(keys), kept.tobytes()), len(packed[2])

    def _known_offsets(self, conn: sqlite3.Connection, digests: dict[str, int]) -> dict[str, int]:
        """Offsets of the keys already appended within the window (hash hits, verified)."""
        hits = self.index.find(list(set(digests.values())))
        if not hits:
            return {}
        stored = stored_dedupe_keys(conn, sorted(set(hits.values())))
        known: dict[str, int] = {}
        for key, digest in digests.items():
            offset = hits.get(digest)
            if offset is None:
                continue
            original = stored.get(offset)
            # a truncated record cannot be checked; its hash is trusted (a 2^-64 risk)
            if original is None or original == key:
                known[key] = offset
        return known

    def close(self) -> None:
        """Delete the index's files."""
        self.index.close()
