"""Moving the SQLite log's WAL into the database file (the writer connection never does).

Two steps on a thread of their own, on a connection whose ``synchronous`` is the configured
one (so with ``full`` or ``normal`` the database file is fsynced before the WAL may be
reused): a PASSIVE checkpoint copies what is there while commits go on; then commits pause
and a RESTART checkpoint copies the little that came meanwhile and lets the next commit start
the WAL from its beginning. A passive checkpoint alone, racing a writer that never pauses,
never catches up and the WAL grows without bound; a restart alone, competing with the loop
for the write lock, can starve.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

CHECKPOINT_EVERY_BYTES = 8 * 1024 * 1024


class Checkpointer:
    """Runs the two-step checkpoint; tells the log when commits must pause and may resume."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn = conn
        self._loop = loop
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._resume: Callable[[], None] = lambda: None
        self.running = False
        self.commits_paused = False

    def start(self, resume: Callable[[], None]) -> None:
        """Begin a checkpoint; ``resume`` is called in the loop once commits may go on."""
        self.running = True
        self._resume = resume
        done = self._loop.run_in_executor(self._thread, self._checkpoint, "PASSIVE")
        done.add_done_callback(self._restart_wal)

    def _checkpoint(self, mode: str) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})")

    def _restart_wal(self, _done: asyncio.Future[None]) -> None:
        self.commits_paused = True
        restarted = self._loop.run_in_executor(self._thread, self._checkpoint, "RESTART")
        restarted.add_done_callback(self._finished)

    def _finished(self, _done: asyncio.Future[None]) -> None:
        self.commits_paused = False
        self.running = False
        self._resume()

    def close(self) -> None:
        """Wait for a running checkpoint, then close the connection."""
        self._thread.shutdown()
        self._conn.close()
