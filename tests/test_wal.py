"""Several connections opening a new SQLite file at once all get it in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from personify.wal import use_wal

ROUNDS = 100
OPENERS = 4


def _open_together(folder: Path, switch: Callable[[sqlite3.Connection], None]) -> list[str]:
    """Each round, OPENERS threads open one new file at once, switch it to WAL and write."""
    errors: list[str] = []
    for round_number in range(ROUNDS):
        path = folder / f"round-{round_number}.db"
        start = threading.Barrier(OPENERS)

        def open_and_write(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                conn = sqlite3.connect(path, timeout=10, isolation_level=None)
                try:
                    switch(conn)
                    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                    conn.execute("INSERT INTO t VALUES (1)")
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_and_write) for _ in range(OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    return errors


def test_connections_opening_a_new_file_together_all_switch_it_to_wal(tmp_path: Path) -> None:
    assert _open_together(tmp_path, use_wal) == []


def test_use_wal_leaves_a_wal_file_as_it_is(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "a.db") as conn:
        use_wal(conn)
        use_wal(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_use_wal_does_not_hide_other_errors(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        use_wal(conn)
