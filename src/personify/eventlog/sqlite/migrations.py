"""Bring a log file written by an earlier pre-release layout up to the current one.

``PRAGMA user_version`` says which layout a file has; every step runs inside the caller's
write transaction, so a crash leaves the file as it was.

* 0 → 1: the row-per-record layout (table ``log``) moves into chunks, and every chunk's
  dedupe hashes are recomputed with xxh3 (they were BLAKE2b): the index is rebuilt from them
  and must agree with the hashes new appends compute.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite.chunks import insert_chunk, pack, unpack_dedupe_keys
from personify.eventlog.sqlite.dedupe import record_hashes

LAYOUT_VERSION = 1
_BATCH_ROWS = 5000


def migrate(conn: sqlite3.Connection) -> None:
    """Upgrade the file's layout to ``LAYOUT_VERSION`` (inside the caller's transaction)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version >= LAYOUT_VERSION:
        return
    _move_row_log(conn)
    _rehash_chunks(conn)
    conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")


def _move_row_log(conn: sqlite3.Connection) -> None:
    """Move the row-per-record table ``log`` into chunks, keeping offsets (consumer groups'
    commits refer to them); a gap in the old offsets starts a new chunk."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'"
    ).fetchone()
    if exists is None:
        return
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
    next_offset = (int(row[0]) if row else 0) + 1
    after = 0
    while True:
        rows = conn.execute(
            'SELECT "offset", key, payload, appended_at, dedupe_key FROM log '
            'WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
            (after, _BATCH_ROWS),
        ).fetchall()
        if not rows:
            break
        run: list[tuple[Any, ...]] = []
        for current in rows:
            if run and int(current[0]) != int(run[-1][0]) + 1:
                _insert_rows(conn, run)
                run = []
            run.append(current)
        _insert_rows(conn, run)
        after = int(rows[-1][0])
        next_offset = max(next_offset, after + 1)
    conn.execute("UPDATE log_head SET next_offset = max(next_offset, ?)", (next_offset,))
    conn.execute("DROP TABLE log")
    conn.execute("DROP TABLE IF EXISTS dedupe")


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    records = [LogRecord(bytes(r[2]), str(r[1]), r[4]) for r in rows]
    head = int(conn.execute("SELECT next_offset FROM log_head").fetchone()[0])
    insert_chunk(
        conn,
        int(rows[0][0]),
        len(rows),
        float(rows[-1][3]),
        record_hashes(records),
        (
            pack([r.key for r in records]),
            pack([r.dedupe_key for r in records]),
            pack([r.payload for r in records]),
        ),
    )
    # the head is set once all rows are moved (offsets of a moved file may have gaps)
    conn.execute("UPDATE log_head SET next_offset = ?", (head,))


def _rehash_chunks(conn: sqlite3.Connection) -> None:
    after = -1
    while True:
        rows = conn.execute(
            "SELECT first_offset, dedupe_keys FROM chunk WHERE first_offset > ? "
            "ORDER BY first_offset LIMIT ?",
            (after, _BATCH_ROWS),
        ).fetchall()
        if not rows:
            return
        for first_offset, dedupe_keys in rows:
            records = [LogRecord(b"", "", key) for key in unpack_dedupe_keys(dedupe_keys)]
            conn.execute(
                "UPDATE chunk SET hashes = ? WHERE first_offset = ?",
                (record_hashes(records), first_offset),
            )
        after = int(rows[-1][0])
