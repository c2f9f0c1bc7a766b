"""What the Redis Streams log adds to the contract: reclaim, delivery counts, safe trimming, dedupe TTL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from personify.errors import BackendUnavailable
from personify.eventlog.base import LogEntry, LogRecord
from personify.eventlog.redis import RedisEventLog
from tests.conftest import make_settings, service_missing
from tests.contracts.conftest import REDIS_URL, drop_redis_keys

OpenLog = Callable[..., Awaitable[RedisEventLog]]


def records(prefix: str, n: int) -> list[LogRecord]:
    return [LogRecord(f"{prefix}-{i}".encode(), f"user-{i % 3}", f"{prefix}-{i}") for i in range(n)]


async def drain(
    log: RedisEventLog, group: str, consumer: str, expected: int, *, timeout_s: float = 10.0
) -> list[LogEntry]:
    got: list[LogEntry] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(await log.read(group, consumer, max_count=500, timeout_ms=100))
    return got


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    """A fresh stream name; the stream and its dedupe keys are deleted afterwards."""
    name = f"personify-test-{uuid.uuid4().hex[:12]}"
    yield name
    await drop_redis_keys(REDIS_URL, name, f"{{{name}}}:*")


@pytest.fixture
async def open_log(tmp_path: Path, stream: str) -> AsyncIterator[OpenLog]:
    """Opens started logs on the test's stream, with settings overrides; closes them after."""
    opened: list[RedisEventLog] = []

    async def open_log(**overrides: Any) -> RedisEventLog:
        settings = make_settings(tmp_path / "data", **overrides)
        log = RedisEventLog.from_url(f"{REDIS_URL}?stream={stream}", settings)
        try:
            await log.start()
        except BackendUnavailable as exc:
            service_missing(f"Redis is unavailable: {exc}")
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        await log.close()


async def raw_redis(log: RedisEventLog) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(log.url)


async def test_url_names_the_stream_and_keeps_the_rest_for_redis(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    log = RedisEventLog.from_url("redis://h:6380/2?stream=clicks&socket_timeout=5", settings)
    assert log.stream == "clicks"
    assert log.url == "redis://h:6380/2?socket_timeout=5"
    assert RedisEventLog.from_url("redis://h:6380/2", settings).stream == "events"


async def test_a_dead_consumers_entries_move_to_a_live_one_after_the_idle_time(
    open_log: OpenLog,
) -> None:
    idle_ms = 400
    dying = await open_log(eventlog_claim_idle_ms=idle_ms)
    await dying.append(records("e", 20))
    taken = await drain(dying, "g", "dying", 20)
    assert len(taken) == 20
    await dying.close()  # gone without acknowledging anything

    survivor = await open_log(eventlog_claim_idle_ms=idle_ms)
    started = time.monotonic()
    early = await survivor.read("g", "survivor", max_count=100, timeout_ms=50)
    if time.monotonic() - started < idle_ms / 1000.0:
        assert early == []  # still inside the idle time: the entries stay with their owner
    claimed = await drain(survivor, "g", "survivor", 20)
    assert [e.payload for e in claimed] == [e.payload for e in taken]
    assert all(e.delivery_count == 2 for e in claimed)
    await survivor.commit("g", "survivor", claimed)
    assert await survivor.lag("g") == 0
    client = await raw_redis(survivor)
    try:
        consumers = await client.xinfo_consumers(survivor.stream, "g")
    finally:
        await client.aclose()
    # the dead consumer, left with nothing pending, is forgotten
    assert [c["name"] for c in consumers] == [b"survivor"]


async def test_delivery_count_grows_with_every_redelivery(open_log: OpenLog) -> None:
    first = await open_log(eventlog_claim_idle_ms=60_000)
    await first.append([LogRecord(b"poison", "user-1", "poison")])
    counts = [e.delivery_count for e in await drain(first, "g", "worker", 1)]
    await first.close()
    for _ in range(3):
        # the worker restarts without having committed: its own pending entry comes back first
        restarted = await open_log(eventlog_claim_idle_ms=60_000)
        again = await drain(restarted, "g", "worker", 1)
        assert [e.payload for e in again] == [b"poison"]
        counts.append(again[0].delivery_count)
        await restarted.close()
    assert counts == [1, 2, 3, 4]

    final = await open_log(eventlog_claim_idle_ms=60_000, eventlog_max_deliveries=4)
    entry = (await drain(final, "g", "worker", 1))[0]
    # what the worker checks before dead-lettering
    assert entry.delivery_count > 4
    await final.commit("g", "worker", [entry])
    assert await final.lag("g") == 0
    assert await final.read("g", "worker", max_count=10, timeout_ms=100) == []


async def test_claimed_entries_count_their_deliveries_too(open_log: OpenLog) -> None:
    log = await open_log(eventlog_claim_idle_ms=200)
    await log.append(records("c", 3))
    await drain(log, "g", "a", 3)
    await asyncio.sleep(0.25)
    first_claim = await drain(log, "g", "b", 3)
    assert {e.delivery_count for e in first_claim} == {2}
    await asyncio.sleep(0.25)
    second_claim = await drain(log, "g", "a", 3)
    assert {e.delivery_count for e in second_claim} == {3}


async def test_trimming_never_drops_unacknowledged_entries(open_log: OpenLog) -> None:
    bound = 50
    log = await open_log(eventlog_stream_max_entries=bound)
    await log.append(records("a", 100))
    got = await drain(log, "g", "c", 100)
    await log.commit("g", "c", got[:30])
    # a second group that has taken one entry and acknowledged nothing holds everything
    assert len(await log.read("slow", "c", max_count=1, timeout_ms=100)) == 1

    for start in range(0, 300, 30):
        await log.append(
            [LogRecord(f"b-{i}".encode(), "user-1", f"b-{i}") for i in range(start, start + 30)]
        )
    client = await raw_redis(log)
    try:
        assert await client.xlen(log.stream) == 400  # nothing trimmed: "slow" needs it all
        assert await log.lag("slow") == 400
        assert await log.lag("g") == 370

        # once "slow" is gone and "g" has acknowledged, the bound applies again, but only
        # below the oldest entry "g" still has pending
        await client.xgroup_destroy(log.stream, "slow")
        await log.append(records("c", 1))
        # the 70 pending and the 301 never delivered to "g" stay; MAXLEN ~ trims whole
        # stream nodes only, so some acknowledged entries may stay too
        assert 371 <= await client.xlen(log.stream) <= 401
        assert await log.lag("g") == 371

        rest = await drain(log, "g", "c", 371 - 70)
        await log.commit("g", "c", got[30:] + rest)
        assert await log.lag("g") == 0
        await log.append(records("d", 1))
        # MAXLEN ~ removes whole stream nodes only: allow one node (100 entries) over
        assert bound <= await client.xlen(log.stream) <= bound + 100
    finally:
        await client.aclose()


async def test_the_bound_keeps_everything_a_restarted_consumer_still_needs(
    open_log: OpenLog,
) -> None:
    first = await open_log(eventlog_stream_max_entries=10)
    # the group exists before the appends: before that, the bound applies to everything
    assert await first.read("g", "c", timeout_ms=0) == []
    await first.append(records("p", 40))
    got = await drain(first, "g", "c", 40)
    await first.commit("g", "c", got[:5])
    await first.close()

    second = await open_log(eventlog_stream_max_entries=10)
    await second.append(records("q", 40))
    again = await drain(second, "g", "c", 75)
    assert [e.payload for e in again] == [e.payload for e in got[5:]] + [
        f"q-{i}".encode() for i in range(40)
    ]
    assert [e.delivery_count for e in again[:35]] == [2] * 35


async def test_dedupe_keys_expire_after_the_window(open_log: OpenLog) -> None:
    window_s = 0.5
    log = await open_log(dedupe_window_hours=window_s / 3600.0)
    first = await log.append(records("m", 1))
    again = await log.append(records("m", 1))
    assert again[0].duplicate and again[0].offset == first[0].offset

    client = await raw_redis(log)
    try:
        ttl_ms = await client.pttl(log.dedupe_prefix + "m-0")
    finally:
        await client.aclose()
    assert 0 < ttl_ms <= window_s * 1000

    await asyncio.sleep(window_s + 0.1)
    later = await log.append(records("m", 1))
    assert not later[0].duplicate
    assert later[0].offset != first[0].offset
    assert len(await drain(log, "g", "c", 2)) == 2


async def test_truncate_removes_exactly_what_every_group_acknowledged(open_log: OpenLog) -> None:
    log = await open_log()
    await log.append(records("t", 10))
    fast = await drain(log, "fast", "c", 10)
    slow = await drain(log, "slow", "c", 10)
    await log.commit("fast", "c", fast)
    await log.commit("slow", "c", slow[:3])
    assert await log.truncate() == 3
    assert [e.payload for e in await log.tail(20)] == [f"t-{i}".encode() for i in range(3, 10)]
    assert await log.truncate() == 0


async def test_a_commit_acknowledges_this_consumers_older_pending_entries(
    open_log: OpenLog,
) -> None:
    log = await open_log()
    await log.append(records("o", 6))
    got = await drain(log, "g", "c", 6)
    await log.commit("g", "c", [got[3]])
    assert await log.lag("g") == 2


async def test_a_burst_of_concurrent_appends_waits_for_connections(open_log: OpenLog) -> None:
    log = await open_log()
    # far more concurrent calls than the connection pool holds
    results = await asyncio.gather(
        *(log.append([LogRecord(f"b-{i}".encode(), "user-1", f"b-{i}")]) for i in range(500))
    )
    assert len({r[0].offset for r in results}) == 500
    assert await log.lag("g") == 500


async def test_truncate_trims_at_the_lower_of_the_ack_floor_and_the_retention(
    open_log: OpenLog,
) -> None:
    log = await open_log()
    await log.append(records("old", 3))
    await asyncio.sleep(0.02)
    # one append: the pending entry usually shares the new ones' millisecond, so the floor
    # (its id) and the cutoff (<ms>-0) differ only in the sequence part
    await log.append(records("new", 3) + records("pending", 1))
    entries = await drain(log, "g", "c", 7)
    await log.commit("g", "c", entries[:6])
    old_at, new_at = entries[2].appended_at, entries[3].appended_at
    assert old_at < new_at
    # committed but younger than the retention: nothing goes
    assert await log.truncate(retention_s=60.0, now=old_at + 1.0) == 0
    # ids are milliseconds: a cutoff at new_at keeps new_at's entries and removes older ones
    assert await log.truncate(retention_s=60.0, now=new_at + 60.0) == 3
    assert [e.payload for e in await log.tail(10)] == [
        b"new-0",
        b"new-1",
        b"new-2",
        b"pending-0",
    ]
    # old enough but not acknowledged: the pending entry stays
    assert await log.truncate(retention_s=60.0, now=new_at + 3600.0) == 3
    assert [e.payload for e in await log.tail(10)] == [b"pending-0"]
