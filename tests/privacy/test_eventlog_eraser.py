"""The event-log eraser on SQLite (to the bytes of the file), Redis Streams and Kafka."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from personify.errors import BackendUnavailable
from personify.eventlog.base import EventLog, LogEntry, LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.privacy.erasure import Subject
from personify.privacy.eventlog import EventLogEraser, names_subject
from tests.conftest import make_settings, service_missing
from tests.contracts.conftest import REDIS_URL, drop_redis_keys
from tests.kafka_broker import TansuBroker, kafka_broker

__all__ = ["kafka_broker"]


ALICE = Subject(
    profile_ids=frozenset({"profile-alice"}),
    ids=frozenset({"alice-0001", "anon-alice-77"}),
    hashed=frozenset({"hmac-sha256:5f1e0c"}),
)


def _event(number: int, **fields: Any) -> LogRecord:
    event = {"type": "track", "event": "Viewed", "messageId": f"m{number}", **fields}
    key = str(fields.get("userId") or fields.get("anonymousId") or "")
    return LogRecord(msgspec.json.encode(event), key, f"src:m{number}")


def _seed() -> list[LogRecord]:
    """Alice's events (by id, anonymous id, hashed email in someone's properties) among
    bob's; bob's are the even numbers."""
    return [
        _event(0, userId="bob-0002"),
        _event(1, userId="alice-0001"),
        _event(2, userId="bob-0002", properties={"page": "/a"}),
        _event(3, anonymousId="anon-alice-77"),
        _event(4, userId="bob-0002"),
        _event(5, userId="carol-0003", properties={"referrer": "hmac-sha256:5f1e0c"}),
        _event(6, userId="bob-0002"),
    ]


def test_the_predicate_matches_keys_and_payloads() -> None:
    match = names_subject(ALICE)
    entry = LogEntry(0, "1", "alice-0001", b"{}", 0.0)
    assert match(entry)
    assert match(entry._replace(key="x", payload=b'{"p":"profile-alice"}'))
    assert not match(entry._replace(key="bob-0002", payload=b'{"userId":"bob-0002"}'))
    short = Subject(frozenset(), frozenset({"u7"}), frozenset())
    assert names_subject(short)(entry._replace(key="x", payload=b'{"f":"u7"}'))
    assert not names_subject(short)(entry._replace(key="x", payload=b'{"f":"/u7x"}'))


# -- SQLite ----------------------------------------------------------------------------------


async def _sqlite_log(path: Path) -> SQLiteEventLog:
    log = SQLiteEventLog(path, durability="normal")
    await log.start()
    return log


def test_sqlite_erasure_leaves_no_byte_of_the_subject_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def seed() -> None:
        log = await _sqlite_log(path)
        # several appends: several chunks, some with alice and bob together
        await log.append(_seed()[:3])
        await log.append(_seed()[3:])
        consumed = await log.read("worker", "c", max_count=2, timeout_ms=200)
        await log.commit("worker", "c", consumed)
        await log.close()

    asyncio.run(seed())
    eraser = EventLogEraser(SQLiteEventLog(path, durability="normal"))
    assert eraser.find(ALICE) == ["event_log: 3 entries at 0:2, 0:4, 0:6"]

    result = eraser.erase(ALICE)

    assert result == {"entries_removed": 3}
    assert eraser.find(ALICE) == []
    for file in tmp_path.iterdir():
        data = file.read_bytes()
        for needle in ALICE.needles:
            assert needle.encode() not in data, (file.name, needle)
    assert eraser.erase(ALICE) == {"entries_removed": 0}

    async def check() -> None:
        log = await _sqlite_log(path)
        # the worker resumes after its commit (offset 2, alice's, is gone anyway)
        rest = await log.read("worker", "c", max_count=10, timeout_ms=200)
        assert [e.key for e in rest] == ["bob-0002", "bob-0002", "bob-0002"]
        assert await log.lag("worker") == 3
        await log.close()

    asyncio.run(check())


def test_the_eraser_runs_on_the_loop_that_owns_the_log(tmp_path: Path) -> None:
    # the server's shape: the log lives on a loop in another thread, the job runs in a thread
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        log = asyncio.run_coroutine_threadsafe(_sqlite_log(tmp_path / "events.db"), loop).result()
        asyncio.run_coroutine_threadsafe(_append(log, _seed()), loop).result()
        eraser = EventLogEraser(log, loop=loop)
        assert eraser.erase(ALICE) == {"entries_removed": 3}
        assert eraser.find(ALICE) == []
        tail = asyncio.run_coroutine_threadsafe(log.tail(10), loop).result()
        assert len(tail) == 4
        asyncio.run_coroutine_threadsafe(log.close(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _append(log: EventLog, records: list[LogRecord]) -> None:
    await log.append(records)


# -- Redis and Kafka -------------------------------------------------------------------------


@pytest.fixture
def redis_log(tmp_path: Path) -> Iterator[EventLog]:
    from personify.eventlog.redis import RedisEventLog

    name = f"personify-test-{uuid.uuid4().hex[:12]}"
    settings = make_settings(tmp_path / "data", dedupe_window_hours=1.0)
    log = RedisEventLog.from_url(f"{REDIS_URL}?stream={name}", settings)
    try:
        asyncio.run(_started(log, "Redis"))
    except BackendUnavailable as exc:
        service_missing(f"Redis is unavailable: {exc}")
    yield log
    asyncio.run(drop_redis_keys(REDIS_URL, name, f"{{{name}}}:*"))


@pytest.fixture
async def kafka_log(tmp_path: Path, kafka_broker: TansuBroker) -> AsyncIterator[EventLog]:
    from personify.eventlog.kafka import KafkaEventLog

    name = f"personify-test-{uuid.uuid4().hex[:12]}"
    settings = make_settings(
        tmp_path / "data",
        dedupe_window_hours=1.0,
        eventlog_dedupe_url=REDIS_URL,
        eventlog_kafka_session_timeout_ms=2000,
        eventlog_kafka_fetch_wait_ms=20,
        eventlog_kafka_linger_ms=1.0,
        eventlog_kafka_delete_records=False,
    )
    log = KafkaEventLog.from_url(kafka_broker.url(name, partitions=2), settings)
    try:
        await log.start()
    except BackendUnavailable as exc:
        service_missing(f"Kafka is unavailable: {exc}")
    await log.append(_seed())
    await log.close()
    yield log
    await drop_redis_keys(REDIS_URL, f"personify:kafka:{name}:*")


async def _started(log: EventLog, engine: str) -> None:
    await log.start()
    await log.append(_seed())
    await log.close()


def test_redis_erasure_deletes_the_entries(redis_log: EventLog) -> None:
    eraser = EventLogEraser(redis_log)
    found = eraser.find(ALICE)
    assert len(found) == 1 and found[0].startswith("event_log: 3 entries at 0:")
    assert eraser.erase(ALICE) == {"entries_removed": 3}
    assert eraser.find(ALICE) == []
    assert eraser.erase(ALICE) == {"entries_removed": 0}

    async def left() -> list[str]:
        await redis_log.start()
        try:
            return [e.key for e in await redis_log.tail(10)]
        finally:
            await redis_log.close()

    assert asyncio.run(left()) == ["bob-0002"] * 4


def test_kafka_reports_what_remains_and_for_how_long(kafka_log: EventLog) -> None:
    eraser = EventLogEraser(kafka_log, retention_s=86_400.0)
    result = eraser.erase(ALICE)
    assert result["entries_removed"] == 0
    remains = result["remains"]
    assert remains["entries"] == 3
    assert len(remains["offsets"]) == 3
    assert "cannot delete single records" in remains["reason"]
    # the broker's retention.ms when it describes the topic, else the log's own setting
    assert remains["retention_s"] is not None and remains["retention_s"] > 0
    found = eraser.find(ALICE)
    assert len(found) == 1 and found[0].startswith("event_log: 3 entries at ")
