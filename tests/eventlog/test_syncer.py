"""The fsync helper process of the SQLite log: answers, coalescing, and a helper that dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from personify.errors import BackendUnavailable
from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.eventlog.sqlite.syncer import FileSyncer


@pytest.fixture
async def syncer(tmp_path: Path) -> AsyncIterator[FileSyncer]:
    target = tmp_path / "data.bin"
    target.write_bytes(b"x" * 1000)
    started = FileSyncer(target)
    started.start(asyncio.get_running_loop())
    yield started
    started.close()


async def sync(syncer: FileSyncer) -> BaseException | None:
    answered: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    syncer.sync(answered.set_result)
    return await asyncio.wait_for(answered, timeout=10)


async def test_every_sync_is_answered_in_order(syncer: FileSyncer) -> None:
    answered: list[tuple[int, BaseException | None]] = []
    for number in range(200):
        syncer.sync(lambda error, number=number: answered.append((number, error)))
    for _ in range(500):
        if len(answered) == 200:
            break
        await asyncio.sleep(0.01)
    assert answered == [(number, None) for number in range(200)]
    assert syncer.pending == 0


async def test_a_file_that_cannot_be_synced_gets_an_error(tmp_path: Path) -> None:
    missing = FileSyncer(tmp_path / "missing.bin")
    missing.start(asyncio.get_running_loop())
    try:
        assert isinstance(await sync(missing), BackendUnavailable)
    finally:
        missing.close()


async def test_a_killed_helper_fails_what_it_owed_and_is_replaced(syncer: FileSyncer) -> None:
    first = syncer.helper_pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # hold it, so the next request is still owed when it dies
    owed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    syncer.sync(owed.set_result)
    os.kill(first, signal.SIGKILL)
    assert isinstance(await asyncio.wait_for(owed, timeout=10), BackendUnavailable)
    assert await sync(syncer) is None
    assert syncer.helper_pid not in (None, first)


async def test_a_full_durability_log_keeps_taking_appends_after_its_helper_died(
    tmp_path: Path,
) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="full")
    await log.start()
    try:
        assert [r.offset for r in await log.append([LogRecord(b"a", "k", "a")])] == ["1"]
        assert log._file_syncer is not None
        pid = log._file_syncer.helper_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert [r.offset for r in await log.append([LogRecord(b"b", "k", "b")])] == ["2"]
    finally:
        await log.close()


async def test_the_wal_stays_bounded_under_steady_appends(tmp_path: Path) -> None:
    # 32 MB through a log that never pauses: checkpoints must let the WAL start over
    log = SQLiteEventLog(tmp_path / "events.db", durability="off")
    await log.start()
    try:
        payload = b"p" * 4000
        largest = 0
        for start in range(0, 8000, 100):
            await log.append([LogRecord(payload, "k", f"m{i}") for i in range(start, start + 100)])
            largest = max(largest, (tmp_path / "events.db-wal").stat().st_size)
    finally:
        await log.close()
    assert largest < 24 * 1024 * 1024


async def test_checkpoints_move_the_wal_into_the_database_file(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="full")
    await log.start()
    try:
        payload = b"p" * 4000
        for start in range(0, 3000, 100):
            await log.append([LogRecord(payload, "k", f"m{i}") for i in range(start, start + 100)])
        # the checkpoint runs on its own thread; the writer itself never checkpoints
        for _ in range(100):
            moved = (tmp_path / "events.db").stat().st_size > 8 * 1024 * 1024
            if moved:
                break
            await asyncio.sleep(0.05)
    finally:
        await log.close()
    # (closing the last connection would checkpoint anyway, so this is checked while open)
    assert moved


async def test_after_a_failed_fsync_the_log_takes_no_more_appends(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="full")
    await log.start()
    try:
        await log.append([LogRecord(b"a", "k", "a")])
        # the helper syncs the WAL by its path: with the file gone from there, fsync fails
        (tmp_path / "events.db-wal").rename(tmp_path / "elsewhere")
        with pytest.raises(BackendUnavailable):
            await log.append([LogRecord(b"b", "k", "b")])
        (tmp_path / "elsewhere").rename(tmp_path / "events.db-wal")
        # not even a retry of the same record is answered "duplicate" now
        with pytest.raises(BackendUnavailable) as refused:
            await log.append([LogRecord(b"b", "k", "b")])
        assert "restart" in refused.value.message
    finally:
        await log.close()


async def test_appends_made_during_an_fsync_share_the_next_transaction(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="full")
    await log.start()
    try:
        assert log._file_syncer is not None
        pid = log._file_syncer.helper_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the first commit's fsync stays running
        try:
            first = asyncio.ensure_future(log.append([LogRecord(b"a", "k", "a")]))
            await asyncio.sleep(0.05)
            later = []
            for i in range(20):  # each in a turn of the loop of its own
                later.append(asyncio.ensure_future(log.append([LogRecord(b"b", "k", f"b{i}")])))
                await asyncio.sleep(0.005)
            chunks = count_chunks(tmp_path / "events.db")
            assert chunks == 1, "nothing is committed while the fsync runs"
            assert not first.done(), "nothing is acknowledged before its fsync"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [r.offset for r in await first] == ["1"]
        offsets = [r.offset for future in later for r in await future]
        assert offsets == [str(n) for n in range(2, 22)]
        assert count_chunks(tmp_path / "events.db") == 2, "the 20 appends shared one commit"
    finally:
        await log.close()


def count_chunks(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM chunk").fetchone()[0])
