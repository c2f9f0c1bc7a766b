"""Putting an SQLite file in WAL mode when several processes open it at once."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

_SWITCH_WAIT_S = 10.0
_RETRY_MIN_S = 0.001
_RETRY_MAX_S = 0.05


def use_wal(db: Any) -> None:
    """Put the file behind ``db`` (a ``sqlite3`` connection or cursor) in WAL mode; it stays
    there once one connection has done it.

    The switch needs the file to itself, and SQLite answers "database is locked" at once,
    without its busy handler, while another connection holds any lock: processes starting
    together on a new file (API nodes, workers, ``--workers N``) failed about one start in
    ten for the state database and one in thirty for the event log. So the mode is read
    first, and the switch retried for up to ten seconds.
    """
    if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + _SWITCH_WAIT_S
    delay_s = _RETRY_MIN_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, _RETRY_MAX_S)
