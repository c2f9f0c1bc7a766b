"""Backends for the contract suites. Each backend appears once; absent engines skip (or fail in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from personify.cache.base import Cache
from personify.cache.memory import MemoryCache
from personify.errors import BackendUnavailable
from personify.eventlog.base import EventLog
from personify.eventlog.sqlite import SQLiteEventLog
from personify.settings import Settings
from personify.store.database import Database
from tests.conftest import make_settings, service_missing
from tests.kafka_broker import TansuBroker, kafka_broker
from tests.postgres import fresh_schema, postgres_database

__all__ = [
    "REDIS_URL",
    "EventLog",
    "LogFactory",
    "StateFactory",
    "drop_redis_keys",
    "kafka_broker",
    "postgres_database",
]

LogFactory = Callable[[], Awaitable[EventLog]]
# opens the test's state database (every call the same one), migrated unless told otherwise
StateFactory = Callable[..., Database]

EVENTLOG_BACKENDS = ["sqlite", "redis", "kafka"]

REDIS_URL = os.environ.get("PERSONIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def drop_redis_keys(url: str, *patterns: str) -> None:
    """Delete every key matching ``patterns`` (a test's stream, its dedupe keys)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        for pattern in patterns:
            batch = [key async for key in client.scan_iter(match=pattern, count=1000)]
            if batch:
                await client.delete(*batch)
    finally:
        await client.aclose()


def _redis_log_settings(tmp_path: Path) -> Settings:
    # a short claim idle time lets another consumer take over a closed one's entries quickly
    return make_settings(tmp_path / "data", dedupe_window_hours=1.0, eventlog_claim_idle_ms=1000)


def _kafka_log_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        dedupe_window_hours=1.0,
        eventlog_dedupe_url=REDIS_URL,
        # tansu holds a JoinGroup for about half the session timeout: keep joins near 1 s
        eventlog_kafka_session_timeout_ms=2000,
        eventlog_kafka_fetch_wait_ms=20,
        eventlog_kafka_linger_ms=1.0,
        # tansu's memory engine does not implement DeleteRecords
        eventlog_kafka_delete_records=False,
    )


@pytest.fixture(params=EVENTLOG_BACKENDS)
async def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogFactory]:
    """Opens started logs that all share one backing store (to test restarts and groups)."""
    opened: list[EventLog] = []
    settings = make_settings(tmp_path / "data", dedupe_window_hours=1.0)
    name = f"personify-test-{uuid.uuid4().hex[:12]}"
    cleanups: list[Callable[[], Awaitable[None]]] = []
    broker: TansuBroker | None = None
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka_broker")

    async def started(log: EventLog, engine: str) -> EventLog:
        try:
            await log.start()
        except BackendUnavailable as exc:
            service_missing(f"{engine} is unavailable: {exc}")
        opened.append(log)
        return log

    async def open_sqlite() -> EventLog:
        log = SQLiteEventLog.from_url(f"sqlite:///{tmp_path / 'events.db'}", settings)
        return await started(log, "SQLite")

    async def open_redis() -> EventLog:
        from personify.eventlog.redis import RedisEventLog

        log = RedisEventLog.from_url(f"{REDIS_URL}?stream={name}", _redis_log_settings(tmp_path))
        if not cleanups:
            cleanups.append(lambda: drop_redis_keys(REDIS_URL, name, f"{{{name}}}:*"))
        return await started(log, "Redis")

    async def open_kafka() -> EventLog:
        from personify.eventlog.kafka import KafkaEventLog

        assert broker is not None
        log = KafkaEventLog.from_url(broker.url(name, partitions=3), _kafka_log_settings(tmp_path))
        if not cleanups:
            cleanups.append(lambda: drop_redis_keys(REDIS_URL, f"personify:kafka:{name}:*"))
        return await started(log, "Kafka")

    factories: dict[str, LogFactory] = {
        "sqlite": open_sqlite,
        "redis": open_redis,
        "kafka": open_kafka,
    }
    yield factories[request.param]
    for log in opened:
        await log.close()
    for cleanup in cleanups:
        await cleanup()


# -- the Cache port ---------------------------------------------------------------------------

CACHE_BACKENDS = ["memory", "redis"]


@pytest.fixture(params=CACHE_BACKENDS)
async def cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cache]:
    """A started cache of each backend; Redis keys live under a prefix removed afterwards."""
    instance: Cache
    prefix = f"personify-test-{uuid.uuid4().hex[:12]}:"
    if request.param == "memory":
        instance = MemoryCache(max_entries=1000, default_ttl_s=30)
    else:
        from personify.cache.redis import RedisCache

        settings = make_settings(tmp_path / "data", cache_ttl_s=30)
        instance = RedisCache.from_url(f"{REDIS_URL}?prefix={prefix}", settings)
    try:
        await instance.start()
    except BackendUnavailable as exc:
        service_missing(f"{request.param} cache is unavailable: {exc}")
    yield instance
    await instance.close()
    if request.param == "redis":
        await drop_redis_keys(REDIS_URL, f"{prefix}*")


# -- the state database -----------------------------------------------------------------------

STATE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=STATE_BACKENDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty state database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'personify.db'}"
    database: str = request.getfixturevalue("postgres_database")
    return fresh_schema(database)


@pytest.fixture
def open_state(state_url: str) -> Iterator[StateFactory]:
    """Opens ``Database``\\s on the test's state database; all are disposed afterwards."""
    opened: list[Database] = []

    def factory(*, auto_upgrade: bool = True) -> Database:
        db = Database(state_url, auto_upgrade=auto_upgrade)
        opened.append(db)
        return db

    yield factory
    for db in opened:
        db.dispose()
