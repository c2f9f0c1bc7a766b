"""The ``EventLog`` contract: every backend must pass this module unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from personify.errors import BackendUnavailable
from personify.eventlog.base import LogEntry, LogRecord
from tests.contracts.conftest import LogFactory


def records(prefix: str, n: int, *, key: str = "user-1", dedupe: bool = True) -> list[LogRecord]:
    return [
        LogRecord(f"{prefix}-{i}".encode(), key, f"{prefix}-{i}" if dedupe else None)
        for i in range(n)
    ]


async def drain(
    log: object, group: str, consumer: str, expected: int, *, timeout_s: float = 20.0
) -> list[LogEntry]:
    """Read until ``expected`` entries arrived (or the timeout passes)."""
    got: list[LogEntry] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(await log.read(group, consumer, max_count=500, timeout_ms=200))  # type: ignore[attr-defined]
    return got


async def test_append_returns_one_result_per_record_in_order(log_factory: LogFactory) -> None:
    log = await log_factory()
    results = await log.append(records("a", 5))
    assert len(results) == 5
    assert not any(r.duplicate for r in results)
    assert len({r.offset for r in results}) == 5
    tail = await log.tail(5)
    assert [e.payload for e in tail] == [f"a-{i}".encode() for i in range(5)]


async def test_append_nothing_is_a_no_op(log_factory: LogFactory) -> None:
    log = await log_factory()
    assert await log.append([]) == []


async def test_payload_bytes_round_trip_exactly(log_factory: LogFactory) -> None:
    log = await log_factory()
    payload = bytes(range(256)) + "é✓".encode()
    await log.append([LogRecord(payload, "k")])
    entries = await drain(log, "g", "c", 1)
    assert entries[0].payload == payload
    assert entries[0].key == "k"


async def test_each_group_reads_everything_once_in_key_order(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.append(records("a", 50, key="u1") + records("b", 50, key="u2"))
    for group in ("g1", "g2"):
        got = await drain(log, group, "c1", 100)
        assert len(got) == 100
        by_key: dict[str, list[bytes]] = {}
        for entry in got:
            by_key.setdefault(entry.key, []).append(entry.payload)
        assert by_key["u1"] == [f"a-{i}".encode() for i in range(50)]
        assert by_key["u2"] == [f"b-{i}".encode() for i in range(50)]
        # nothing more to deliver to this consumer
        assert await log.read(group, "c1", max_count=10, timeout_ms=100) == []


async def test_read_waits_for_at_most_the_timeout(log_factory: LogFactory) -> None:
    log = await log_factory()
    started = time.monotonic()
    assert await log.read("idle", "c", max_count=10, timeout_ms=300) == []
    assert time.monotonic() - started < 5.0


async def test_read_wakes_up_for_a_concurrent_append(log_factory: LogFactory) -> None:
    log = await log_factory()
    reader = asyncio.create_task(drain(log, "g", "c", 1, timeout_s=10))
    await asyncio.sleep(0.2)
    await log.append(records("late", 1))
    got = await reader
    assert [e.payload for e in got] == [b"late-0"]


async def test_uncommitted_entries_are_delivered_again_after_restart(
    log_factory: LogFactory,
) -> None:
    first = await log_factory()
    await first.append(records("a", 10))
    got = await drain(first, "g", "c", 10)
    await first.commit("g", "c", got[:4])
    await first.close()

    second = await log_factory()
    again = await drain(second, "g", "c", 6)
    assert [e.payload for e in again] == [f"a-{i}".encode() for i in range(4, 10)]


async def test_lag_counts_what_the_group_has_not_committed(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.append(records("a", 20))
    got = await drain(log, "g", "c", 20)
    assert await log.lag("g") == 20
    await log.commit("g", "c", got[:15])
    assert await log.lag("g") == 5
    await log.commit("g", "c", got)
    assert await log.lag("g") == 0


async def test_commit_never_moves_backwards(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.append(records("a", 10))
    got = await drain(log, "g", "c", 10)
    await log.commit("g", "c", got)
    await log.commit("g", "c", got[:3])
    assert await log.lag("g") == 0


async def test_dedupe_key_appends_once_across_calls(log_factory: LogFactory) -> None:
    log = await log_factory()
    first = await log.append(records("m", 3))
    again = await log.append(records("m", 3) + records("n", 1))
    assert [r.duplicate for r in again] == [True, True, True, False]
    assert [r.offset for r in again[:3]] == [r.offset for r in first]
    got = await drain(log, "g", "c", 4)
    assert sorted(e.payload for e in got) == [b"m-0", b"m-1", b"m-2", b"n-0"]
    assert await log.read("g", "c", max_count=10, timeout_ms=200) == []


async def test_dedupe_within_one_call(log_factory: LogFactory) -> None:
    log = await log_factory()
    results = await log.append(records("x", 1) + records("x", 1))
    assert [r.duplicate for r in results] == [False, True]
    assert results[0].offset == results[1].offset


async def test_dedupe_survives_a_restart(log_factory: LogFactory) -> None:
    first = await log_factory()
    await first.append(records("r", 2))
    await first.close()
    second = await log_factory()
    results = await second.append(records("r", 2))
    assert all(r.duplicate for r in results)


async def test_records_without_dedupe_key_are_never_deduplicated(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.append(records("same", 1, dedupe=False))
    results = await log.append(records("same", 1, dedupe=False))
    assert not results[0].duplicate
    got = await drain(log, "g", "c", 2)
    assert [e.payload for e in got] == [b"same-0", b"same-0"]


async def test_concurrent_appends_all_land_and_keep_key_order(log_factory: LogFactory) -> None:
    log = await log_factory()

    async def writer(key: str) -> None:
        for i in range(20):
            await log.append([LogRecord(f"{key}:{i}".encode(), key, f"{key}:{i}")])

    await asyncio.gather(*(writer(f"k{n}") for n in range(10)))
    got = await drain(log, "g", "c", 200)
    assert len(got) == 200
    for n in range(10):
        mine = [e.payload for e in got if e.key == f"k{n}"]
        assert mine == [f"k{n}:{i}".encode() for i in range(20)]


async def test_duplicates_are_answered_and_the_rest_lands(log_factory: LogFactory) -> None:
    log = await log_factory()
    assert not any(r.duplicate for r in await log.append(records("c", 3)))
    # two seen before, one new, and the new one again within the call
    again = records("c", 2) + records("d", 1) + records("d", 1)
    assert [r.duplicate for r in await log.append(again)] == [True, True, False, True]
    await log.close()
    reopened = await log_factory()
    got = await drain(reopened, "g", "c", 4)
    assert sorted(e.payload for e in got) == [b"c-0", b"c-1", b"c-2", b"d-0"]
    assert await reopened.read("g", "c", max_count=10, timeout_ms=200) == []


async def test_concurrent_single_appends_land_durably_in_order_and_deduplicated(
    log_factory: LogFactory,
) -> None:
    log = await log_factory()
    offsets: dict[str, str] = {}

    async def writer(key: str) -> None:
        for i in range(10):
            (result,) = await log.append([LogRecord(f"{key}:{i}".encode(), key, f"{key}:{i}")])
            assert not result.duplicate
            offsets[f"{key}:{i}"] = result.offset

    # many single appends at once, as the single-event routes make them
    await asyncio.gather(*(writer(f"k{n}") for n in range(5)))
    assert len(set(offsets.values())) == 50
    (again,) = await log.append([LogRecord(b"k0:0 again", "k0", "k0:0")])
    assert again.duplicate and again.offset == offsets["k0:0"]
    await log.close()
    reopened = await log_factory()
    got = await drain(reopened, "g", "c", 50)
    assert len(got) == 50
    for n in range(5):
        mine = [e.payload for e in got if e.key == f"k{n}"]
        assert mine == [f"k{n}:{i}".encode() for i in range(10)]
    assert await reopened.read("g", "c", max_count=10, timeout_ms=200) == []


async def test_truncate_keeps_what_a_group_still_needs(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.append(records("t", 10))
    fast = await drain(log, "fast", "c", 10)
    slow = await drain(log, "slow", "c", 10)
    await log.commit("fast", "c", fast)
    await log.commit("slow", "c", slow[:4])
    await log.truncate()
    assert await log.lag("slow") == 6
    assert await log.lag("fast") == 0
    # what the slow group has not committed is still readable after a restart
    await log.close()
    reopened = await log_factory()
    again = await drain(reopened, "slow", "c2", 6)
    assert [e.payload for e in again] == [f"t-{i}".encode() for i in range(4, 10)]
    await reopened.commit("slow", "c2", again)
    await reopened.truncate()
    assert await reopened.lag("slow") == 0


async def test_truncate_honours_both_the_commits_and_the_retention(
    log_factory: LogFactory,
) -> None:
    log = await log_factory()
    await log.append(records("r", 6))
    done = await drain(log, "done", "c", 6)
    late = await drain(log, "late", "c", 6)
    await log.commit("done", "c", done)
    await log.commit("late", "c", late)
    # every group committed everything, but nothing is an hour old yet: nothing goes
    assert await log.truncate(retention_s=3600) == 0
    assert [e.payload for e in await log.tail(10)] == [f"r-{i}".encode() for i in range(6)]
    # two hours on, the records are old enough; a group that committed only two keeps the rest
    await log.append(records("s", 4))
    later = time.time() + 7200
    await log.commit("done", "c", await drain(log, "done", "c", 4))
    more = await drain(log, "late", "c", 4)
    await log.commit("late", "c", more[:1])
    removed = await log.truncate(retention_s=3600, now=later)
    # a backend may remove less (whole chunks; Kafka without DeleteRecords) but never more
    assert 0 <= removed <= 7
    left = [e.payload for e in await log.tail(20)]
    assert len(left) == 10 - removed
    assert left[-3:] == [b"s-1", b"s-2", b"s-3"]
    assert await log.lag("late") == 3
    # what the late group has not committed is still delivered after a restart
    await log.close()
    reopened = await log_factory()
    again = await drain(reopened, "late", "c2", 3)
    assert [e.payload for e in again] == [b"s-1", b"s-2", b"s-3"]


@pytest.mark.parametrize("n", [1, 1000])
async def test_large_appends_are_read_back_completely(log_factory: LogFactory, n: int) -> None:
    log = await log_factory()
    await log.append(records("big", n))
    got = await drain(log, "g", "c", n)
    assert len(got) == n
    assert len({e.payload for e in got}) == n


def _naming(user: str) -> Callable[[LogEntry], bool]:
    """The predicate an erasure of ``user`` passes: their key, or their id in the payload."""
    needle = user.encode()
    return lambda entry: entry.key == user or needle in entry.payload


async def test_erase_removes_every_matching_entry_or_reports_it(log_factory: LogFactory) -> None:
    log = await log_factory()
    bob = records("bob", 6, key="bob")
    alice = [LogRecord(f"alice-{i}".encode(), "alice", f"alice-{i}") for i in range(3)]
    # interleaved in one append: the SQLite log holds them in one chunk
    await log.append([bob[0], alice[0], bob[1], alice[1], bob[2], alice[2], *bob[3:]])
    first: list[LogEntry] = []
    deadline = time.monotonic() + 20
    while not first and time.monotonic() < deadline:
        first = await log.read("early", "c", max_count=2, timeout_ms=200)
    await log.commit("early", "c", first)
    match = _naming("alice")

    looked = await log.erase(match, dry_run=True)
    assert looked.removed == 0
    assert len(looked.remaining) == 3
    report = await log.erase(match)

    if report.remaining:
        # the engine cannot remove a single record (Kafka): it says what stays, and why
        assert report.removed == 0
        assert sorted(report.remaining) == sorted(looked.remaining)
        assert report.reason
        return
    assert report.removed == 3
    expected = [f"bob-{i}".encode() for i in range(6)]
    assert [e.payload for e in await log.tail(20)] == expected
    # a group that read part of it gets the rest, without the erased entries
    assert [e.payload for e in first] == [b"bob-0", b"alice-0"]
    rest = await drain(log, "early", "c", 5)
    assert [e.payload for e in rest] == expected[1:]
    assert await log.read("early", "c", max_count=10, timeout_ms=200) == []
    await log.commit("early", "c", rest)
    assert await log.lag("early") == 0
    # a new group, after a restart, never sees them
    await log.close()
    reopened = await log_factory()
    fresh = await drain(reopened, "late", "c", 6)
    assert [e.payload for e in fresh] == expected
    assert await reopened.lag("late") == 6
    assert await reopened.erase(match) == (0, (), None, "")
    # appends after an erasure land and are read as usual
    await reopened.append(records("carol", 2, key="carol"))
    more = await drain(reopened, "late", "c", 2)
    assert [e.payload for e in more] == [b"carol-0", b"carol-1"]


async def test_ping_answers_while_started_and_refuses_once_closed(log_factory: LogFactory) -> None:
    log = await log_factory()
    await log.ping()
    await log.append(records("p", 1))
    await log.ping()
    await log.close()
    with pytest.raises(BackendUnavailable):
        await log.ping()
