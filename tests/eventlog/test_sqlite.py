"""What the SQLite event log adds to the shared contract: durability, group commit, bounds."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pydantic
import pytest

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, LogRecord, count_duplicates, open_eventlog
from personify.eventlog.sqlite import SQLiteEventLog, count_records, dedupe_hash, iter_records
from personify.registry import SQLiteLogConfig
from tests.conftest import make_settings

OpenLog = Callable[..., Awaitable[SQLiteEventLog]]


@pytest.fixture
async def open_log(tmp_path: Path) -> AsyncIterator[OpenLog]:
    """Starts logs on ``tmp_path/events.db`` and closes them all at the end."""
    opened: list[SQLiteEventLog] = []

    async def factory(**options: Any) -> SQLiteEventLog:
        options.setdefault("durability", "off")
        log = SQLiteEventLog(tmp_path / "events.db", **options)
        await log.start()
        opened.append(log)
        return log

    yield factory
    for log in opened:
        await log.close()


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql))


def record(name: str, dedupe: bool = True) -> LogRecord:
    return LogRecord(name.encode(), "k", name if dedupe else None)


@pytest.mark.parametrize(("durability", "level"), [("full", 2), ("normal", 1), ("off", 0)])
async def test_durability_maps_to_pragma_synchronous(
    open_log: OpenLog, durability: str, level: int
) -> None:
    log = await open_log(durability=durability)
    with closing(log._connect()) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone() == (level,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_settings_choose_the_durability(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, eventlog_durability="full")
    log = SQLiteEventLog.from_url(f"sqlite:///{tmp_path / 'e.db'}", settings)
    await log.start()
    try:
        with closing(log._connect()) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        await log.close()


def test_the_registry_builds_the_logs_config_from_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, eventlog_dedupe_memory_mb=8, eventlog_max_batch_events=77, dedupe_window_hours=2
    )
    log = open_eventlog(settings, f"sqlite:///{tmp_path / 'e.db'}")
    assert isinstance(log, SQLiteEventLog)
    assert log.config == SQLiteLogConfig(
        tmp_path / "e.db",
        durability=settings.eventlog_durability,
        max_batch_events=77,
        dedupe_window_s=7200.0,
        dedupe_memory_bytes=8 * 1024 * 1024,
    )
    with pytest.raises(pydantic.ValidationError):
        make_settings(tmp_path, eventlog_dedupe_memory_mb=0)


def test_an_invalid_durability_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteEventLog(tmp_path / "e.db", durability="sometimes")
    with pytest.raises(pydantic.ValidationError):
        make_settings(tmp_path, eventlog_durability="sometimes")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///rel/events.db", Path("rel/events.db")),
        ("sqlite:////abs/e.db", Path("/abs/e.db")),
    ],
)
def test_from_url_reads_relative_and_absolute_paths(
    tmp_path: Path, url: str, expected: Path
) -> None:
    assert SQLiteEventLog.from_url(url, make_settings(tmp_path)).path == expected


def test_from_url_without_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteEventLog.from_url("sqlite://", make_settings(tmp_path))


async def test_group_commit_shares_transactions_between_concurrent_appends(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log(linger_ms=20.0)
    results = await asyncio.gather(*(log.append([record(f"r{i}")]) for i in range(200)))
    assert sorted(int(r[0].offset) for r in results) == list(range(1, 201))
    # one chunk row per transaction
    transactions = query(tmp_path / "events.db", "SELECT count(*) FROM chunk")
    assert transactions[0][0] < 50, "200 concurrent appends should share a few transactions"


async def test_a_batch_never_exceeds_max_batch_events(open_log: OpenLog, tmp_path: Path) -> None:
    log = await open_log(linger_ms=50.0, max_batch_events=10)
    await asyncio.gather(*(log.append([record(f"r{i}")]) for i in range(40)))
    sizes = query(tmp_path / "events.db", "SELECT count FROM chunk ORDER BY 1 DESC")
    assert sum(s[0] for s in sizes) == 40
    assert sizes[0][0] <= 10


async def test_single_appends_of_one_turn_share_one_queue_entry_and_one_transaction(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log()
    futures = [log.append([record(f"r{i}")]) for i in range(100)]
    assert len(log._queued) == 1, "single appends between two flushes share one entry"
    results = await asyncio.gather(*futures)
    assert [(r[0].offset, r[0].duplicate) for r in results] == [
        (str(i), False) for i in range(1, 101)
    ]
    assert query(tmp_path / "events.db", "SELECT first_offset, count FROM chunk") == [(1, 100)]


@pytest.mark.parametrize("durability", ["off", "full"])
async def test_a_single_append_never_joins_an_entry_already_written(
    open_log: OpenLog, tmp_path: Path, durability: str
) -> None:
    log = await open_log(durability=durability)
    first = log.append([record("a")])
    await asyncio.sleep(0)  # the flush writes "a" (and, with full, starts its fsync)
    second = log.append([record("b")])
    assert [r[0].offset for r in await asyncio.gather(first, second)] == ["1", "2"]
    assert [e.payload for e in await log.tail(10)] == [b"a", b"b"]
    assert query(tmp_path / "events.db", "SELECT count FROM chunk") == [(1,), (1,)]


async def test_single_appends_never_exceed_max_batch_events(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log(max_batch_events=10)
    futures = [log.append([record(f"r{i}")]) for i in range(35)]
    assert len(log._queued) == 4
    await asyncio.gather(*futures)
    sizes = query(tmp_path / "events.db", "SELECT count FROM chunk ORDER BY first_offset")
    assert sizes == [(10,), (10,), (10,), (5,)]
    assert [e.payload for e in await log.tail(35)] == [f"r{i}".encode() for i in range(35)]


async def test_single_and_batch_appends_share_a_transaction_and_each_gets_its_answer(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log()
    await log.append([record("old")])
    plain, mixed, single, old_again, plain_again = await asyncio.gather(
        log.append([record("p1"), record("p2")]),
        log.append([record("c1"), record("old"), record("c2")]),
        log.append([record("s1")]),
        log.append([record("old")]),
        log.append([record("p3")]),
    )
    # the second transaction had duplicates, so it took the record-by-record path
    assert [(r.offset, r.duplicate) for r in plain] == [("2", False), ("3", False)]
    assert [(r.offset, r.duplicate) for r in mixed] == [("4", False), ("1", True), ("5", False)]
    # the three single appends shared one entry, behind the two batches
    assert [(r.offset, r.duplicate) for r in single] == [("6", False)]
    assert [(r.offset, r.duplicate) for r in old_again] == [("1", True)]
    assert [(r.offset, r.duplicate) for r in plain_again] == [("7", False)]
    assert query(tmp_path / "events.db", "SELECT first_offset, count FROM chunk") == [
        (1, 1),
        (2, 6),
    ]
    # and without a duplicate, the all-new path answers every kind
    plain, single, batch = await asyncio.gather(
        log.append([record("p4")]),
        log.append([record("s2")]),
        log.append([record("c3"), record("c4")]),
    )
    # the first single append opened the shared entry, so both singles come first
    assert [r.offset for r in [*plain, *single, *batch]] == ["8", "9", "10", "11"]
    assert [e.payload for e in await log.tail(4)] == [b"p4", b"s2", b"c3", b"c4"]


async def test_single_appends_over_the_pending_bound_are_refused(open_log: OpenLog) -> None:
    log = await open_log(linger_ms=100.0, max_pending_events=10)
    futures = [log.append([record(f"r{i}")]) for i in range(15)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for landed in outcomes[:10]:
        assert not isinstance(landed, BaseException) and not landed[0].duplicate
    for refused in outcomes[10:]:
        assert isinstance(refused, BackendUnavailable)
        assert refused.code == "log_overloaded"
    assert [e.payload for e in await log.tail(20)] == [f"r{i}".encode() for i in range(10)]
    # once the queue drained, single appends are taken again
    await log.append([record("later")])
    assert (await log.tail(1))[0].payload == b"later"


async def test_a_single_append_to_a_stopped_log_is_backend_unavailable(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="off")
    with pytest.raises(BackendUnavailable):
        await log.append([record("a")])
    await log.start()
    pending = log.append([record("b")])
    await log.close()
    await pending  # close writes what is queued
    with pytest.raises(BackendUnavailable):
        await log.append([record("c")])
    assert [payload for _, _, payload in iter_records(tmp_path / "events.db")] == [b"b"]


async def test_over_the_pending_bound_appends_are_refused(open_log: OpenLog) -> None:
    log = await open_log(linger_ms=100.0, max_pending_events=10)
    outcomes = await asyncio.gather(
        log.append([record(f"a{i}") for i in range(8)]),
        log.append([record(f"b{i}") for i in range(8)]),
        return_exceptions=True,
    )
    assert not isinstance(outcomes[0], BaseException) and len(outcomes[0]) == 8
    refused = outcomes[1]
    assert isinstance(refused, BackendUnavailable)
    assert refused.code == "log_overloaded"
    assert refused.retry_after_s >= 1
    assert [e.payload for e in await log.tail(20)] == [f"a{i}".encode() for i in range(8)]
    # once the queue drained, appends are taken again
    assert len(await log.append([record(f"c{i}") for i in range(8)])) == 8


async def test_one_append_larger_than_the_bound_is_taken_when_nothing_waits(
    open_log: OpenLog,
) -> None:
    log = await open_log(max_pending_events=5)
    results = await log.append([record(f"r{i}") for i in range(20)])
    assert len(results) == 20


async def test_dedupe_holds_within_the_window_and_expires_after(open_log: OpenLog) -> None:
    log = await open_log(dedupe_window_s=0.2)
    first = await log.append([record("m1")])
    again = await log.append([record("m1")])
    assert again[0].duplicate and again[0].offset == first[0].offset
    await asyncio.sleep(0.3)
    later = await log.append([record("m1")])
    assert not later[0].duplicate
    assert later[0].offset != first[0].offset
    assert len(await log.tail(10)) == 2


async def test_duplicates_within_one_append_are_stored_once(open_log: OpenLog) -> None:
    log = await open_log()
    results = await log.append([record("m1"), record("m1"), record("free", dedupe=False)])
    assert [r.duplicate for r in results] == [False, True, False]
    assert results[1].offset == results[0].offset
    assert [e.payload for e in await log.tail(10)] == [b"m1", b"free"]


async def test_dedupe_survives_a_reopen(open_log: OpenLog) -> None:
    log = await open_log()
    first = await log.append([record("m1")])
    await log.close()
    reopened = await open_log()
    again = await reopened.append([record("m1")])
    assert again[0].duplicate and again[0].offset == first[0].offset


async def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db", durability="off", linger_ms=200.0)
    await log.start()
    pending = asyncio.ensure_future(log.append([record("last")]))
    await asyncio.sleep(0.01)
    await log.close()
    assert len(await pending) == 1
    assert [payload for _, _, payload in iter_records(tmp_path / "events.db")] == [b"last"]


async def test_appending_to_a_stopped_log_is_backend_unavailable(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    with pytest.raises(BackendUnavailable) as caught:
        await log.append([record("x")])
    assert caught.value.code == "log_unavailable"


async def test_an_unopenable_file_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "events.db").mkdir()
    log = SQLiteEventLog(tmp_path / "events.db")
    with pytest.raises(BackendUnavailable) as caught:
        await log.start()
    assert caught.value.code == "log_unavailable"


async def test_lag_does_not_register_a_consumer_group(open_log: OpenLog, tmp_path: Path) -> None:
    log = await open_log()
    await log.append([record(f"r{i}") for i in range(3)])
    assert await log.lag("nobody") == 3
    assert query(tmp_path / "events.db", "SELECT name FROM consumer_groups") == []
    entries = await log.read("worker", "c1", timeout_ms=0)
    await log.commit("worker", "c1", entries)
    assert await log.truncate() == 3


async def test_a_dedupe_hash_collision_never_drops_a_distinct_event(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log()
    first = await log.append([record("alpha"), record("gamma")])
    await log.close()
    # forge a collision in the real file: the hash stored for "gamma" is now "beta"'s, so the
    # index rebuilt at start sends "beta" to gamma's record
    forged = array("Q", [dedupe_hash("alpha"), dedupe_hash("beta")]).tobytes()
    with closing(sqlite3.connect(tmp_path / "events.db")) as conn:
        conn.execute("UPDATE chunk SET hashes = ?", (forged,))
        conn.commit()
    reopened = await open_log()
    results = await reopened.append([record("beta"), record("alpha")])
    assert not results[0].duplicate
    assert results[1].duplicate and results[1].offset == first[0].offset
    payloads = [payload for _, _, payload in iter_records(tmp_path / "events.db")]
    assert payloads == [b"alpha", b"gamma", b"beta"]


async def test_two_logs_on_one_file_never_reuse_an_offset(
    open_log: OpenLog, tmp_path: Path
) -> None:
    # two instances are two writer connections with their own dedupe index and head, as two
    # API processes sharing the file have (in one event loop their commits alternate)
    first, second = await open_log(), await open_log()

    async def send(log: SQLiteEventLog, name: str) -> None:
        for start in range(0, 2000, 50):
            await log.append([record(f"{name}-{i}") for i in range(start, start + 50)])

    await asyncio.gather(
        *(send(log, f"{n}-{i}") for i in range(4) for n, log in [("a", first), ("b", second)])
    )
    offsets = [offset for offset, _, _ in iter_records(tmp_path / "events.db")]
    payloads = [payload for _, _, payload in iter_records(tmp_path / "events.db")]
    assert offsets == list(range(1, 16001))
    assert len(set(payloads)) == count_records(tmp_path / "events.db") == 16000


async def test_dedupe_holds_across_two_writers_on_one_file(
    open_log: OpenLog, tmp_path: Path
) -> None:
    # each writer catches up on the other's chunks once it holds the write lock
    first, second = await open_log(), await open_log()
    original = await first.append([record("m1"), record("m2")])
    again = await second.append([record("m2"), record("m3")])
    assert again[0].duplicate and again[0].offset == original[1].offset
    assert not again[1].duplicate and int(again[1].offset) == 3
    back = await first.append([record("m3"), record("m4")])
    assert back[0].duplicate and back[0].offset == again[1].offset
    assert int(back[1].offset) == 4
    assert [payload for _, _, payload in iter_records(tmp_path / "events.db")] == [
        b"m1",
        b"m2",
        b"m3",
        b"m4",
    ]


async def test_an_append_waits_while_another_process_holds_the_write_lock(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = await open_log()
    holder = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(log.append([record("waited")]))
        await asyncio.sleep(0.2)
        assert not pending.done(), "the append must wait for the lock, not fail"
        # the event loop is not blocked while it waits
        assert await asyncio.wait_for(asyncio.sleep(0, result="free"), timeout=1) == "free"
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert [r.offset for r in await asyncio.wait_for(pending, timeout=5)] == ["1"]


async def test_one_big_chunk_is_read_in_steps(open_log: OpenLog) -> None:
    log = await open_log()
    await log.append([record(f"r{i}") for i in range(1000)])
    seen: list[bytes] = []
    while entries := await log.read("g", "c", max_count=300, timeout_ms=0):
        assert len(entries) <= 300
        seen.extend(e.payload for e in entries)
        await log.commit("g", "c", entries)
    assert seen == [f"r{i}".encode() for i in range(1000)]
    assert await log.lag("g") == 0
    # a new consumer of the group starts after the group's commit
    await log.append([record("late")])
    fresh = await open_log()
    assert [e.payload for e in await fresh.read("g", "other", timeout_ms=0)] == [b"late"]


async def test_truncate_keeps_offsets_growing_and_counts_records(open_log: OpenLog) -> None:
    log = await open_log()
    await log.append([record(f"a{i}") for i in range(5)])
    await log.append([record(f"b{i}") for i in range(5)])
    entries = await log.read("g", "c", max_count=7, timeout_ms=0)
    await log.commit("g", "c", entries)
    # the first chunk is wholly committed, the second only in part: only the first goes
    assert await log.truncate() == 5
    assert await log.lag("g") == 3
    assert await log.lag("newcomer") == 5
    entries = await log.read("g", "c", timeout_ms=0)
    await log.commit("g", "c", entries)
    assert await log.truncate() == 5
    # an empty log keeps counting from where it was
    assert [r.offset for r in await log.append([record("c0")])] == ["11"]
    assert [e.offset for e in await log.tail(5)] == ["11"]


async def test_a_file_in_the_row_per_record_layout_is_moved_into_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            """
            CREATE TABLE log ("offset" INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
                payload BLOB NOT NULL, appended_at REAL NOT NULL, dedupe_key TEXT);
            CREATE TABLE dedupe (hash INTEGER PRIMARY KEY, "offset" INTEGER NOT NULL,
                appended_at REAL NOT NULL);
            CREATE TABLE consumer_groups (name TEXT PRIMARY KEY, committed INTEGER NOT NULL);
            """
        )
        now = time.time()
        rows = [(o, f"k{o}", f"p{o}".encode(), now, f"d{o}") for o in (3, 4, 5, 8, 9)]
        conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("INSERT INTO consumer_groups VALUES ('worker', 4)")
        conn.commit()
    log = SQLiteEventLog(path, durability="off")
    await log.start()
    try:
        assert [(e.offset, e.key, e.payload) for e in await log.tail(10)] == [
            (str(o), f"k{o}", f"p{o}".encode()) for o in (3, 4, 5, 8, 9)
        ]
        # the group's commit still means the same records
        assert [e.offset for e in await log.read("worker", "c", timeout_ms=0)] == ["5", "8", "9"]
        # dedupe keys came along, and new offsets follow the old ones
        results = await log.append([record("d8"), record("new")])
        assert results[0].duplicate and results[0].offset == "8"
        assert results[1].offset == "10"
    finally:
        await log.close()
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master")}
    assert "log" not in tables and "dedupe" not in tables


async def test_dedupe_stays_exact_beyond_its_memory_budget(
    open_log: OpenLog, tmp_path: Path
) -> None:
    # a budget of 64 KiB holds a few thousand entries; the rest go to runs on disk
    log = await open_log(dedupe_memory_bytes=64 * 1024)
    first = [await log.append([record(f"m{b}-{i}") for i in range(500)]) for b in range(40)]
    assert log._writer.index.run_count >= 2, "20,000 keys must not fit a 64 KiB budget"
    assert log.dedupe_index_bytes <= 64 * 1024
    # every key is found again, oldest and newest, with its original offset
    again = await log.append([record(f"m{b}-{i}") for b in (0, 17, 39) for i in (0, 250, 499)])
    expected = [first[b][i].offset for b in (0, 17, 39) for i in (0, 250, 499)]
    assert [(r.offset, r.duplicate) for r in again] == [(o, True) for o in expected]
    # and nothing new is taken for a duplicate
    fresh = await log.append([record(f"new{i}") for i in range(300)])
    assert not any(r.duplicate for r in fresh)
    assert count_records(tmp_path / "events.db") == 20_300
    await log.close()
    # the index rebuilt at start, within the budget, answers the same
    reopened = await open_log(dedupe_memory_bytes=64 * 1024)
    back = await reopened.append([record("m3-7"), record("new299"), record("other")])
    assert [(r.offset, r.duplicate) for r in back] == [
        (first[3][7].offset, True),
        (fresh[299].offset, True),
        ("20301", False),
    ]


async def test_a_file_with_blake2b_hashes_is_rehashed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SQLiteEventLog(path, durability="off")
    await log.start()
    first = await log.append([record("m1"), record("m2"), record("free", dedupe=False)])
    await log.close()
    # the layout before the xxh3 hashes: BLAKE2b digests and no user_version
    old = array("q", [1234, 5678, 0]).tobytes()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE chunk SET hashes = ?", (old,))
        conn.execute("PRAGMA user_version = 0")
        conn.commit()
    reopened = SQLiteEventLog(path, durability="off")
    await reopened.start()
    try:
        again = await reopened.append([record("m2"), record("m3")])
        assert [(r.offset, r.duplicate) for r in again] == [(first[1].offset, True), ("4", False)]
    finally:
        await reopened.close()
    stored = query(path, "SELECT hashes FROM chunk ORDER BY first_offset")[0][0]
    assert stored == array("Q", [dedupe_hash("m1"), dedupe_hash("m2"), 0]).tobytes()
    assert query(path, "PRAGMA user_version") == [(1,)]


async def test_all_new_results_read_as_a_list_and_count_their_duplicates(
    open_log: OpenLog,
) -> None:
    log = await open_log()
    results = await log.append([record(f"r{i}") for i in range(5)])
    expected = [AppendResult(str(i), False) for i in range(1, 6)]
    assert results == expected and list(results) == expected and len(results) == 5
    assert results[-1] == expected[-1] and list(results[1:3]) == expected[1:3]
    assert count_duplicates(results) == 0
    mixed = await log.append([record("r0"), record("new")])
    assert count_duplicates(mixed) == 1


async def test_truncate_removes_only_committed_chunks_older_than_the_retention(
    open_log: OpenLog,
) -> None:
    log = await open_log()
    await log.append([record(f"old{i}") for i in range(3)])
    await asyncio.sleep(0.05)
    await log.append([record(f"new{i}") for i in range(3)])
    await log.append([record("pending")])
    entries = await log.read("g", "c", max_count=6, timeout_ms=0)
    await log.commit("g", "c", entries)
    old_at, new_at = entries[0].appended_at, entries[3].appended_at
    assert old_at < new_at
    # at new_at + 60 with a 60 s retention, only the first chunk is old enough
    assert await log.truncate(retention_s=60.0, now=(old_at + new_at) / 2 + 60.0) == 3
    assert [e.payload for e in await log.tail(10)] == [b"new0", b"new1", b"new2", b"pending"]
    # much later, the second chunk goes too; the uncommitted one stays whatever its age
    assert await log.truncate(retention_s=60.0, now=new_at + 3600.0) == 3
    assert [e.payload for e in await log.tail(10)] == [b"pending"]
    assert await log.lag("g") == 1


async def test_truncate_deletes_many_chunks_in_bounded_transactions(open_log: OpenLog) -> None:
    log = await open_log()
    # more chunks than one truncate transaction takes (256)
    for i in range(600):
        await log.append([record(f"c{i}")])
    entries = await log.read("g", "c", max_count=600, timeout_ms=0)
    await log.commit("g", "c", entries)
    assert await log.truncate(retention_s=0.0, now=time.time() + 1) == 600
    assert await log.tail(5) == []
