"""The one place where a backend URL picks an adapter, and where an adapter's settings are
taken from ``Settings``. Adapters are imported lazily.

Each event-log adapter takes a small config dataclass of its own (below) instead of the
whole ``Settings``: ``eventlog_config`` builds it from the URL and the settings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from personify.errors import ConfigurationError

if TYPE_CHECKING:
    from personify.settings import Settings

# scheme -> "module:Class"; an event-log class is built from its config (``eventlog_config``)
EVENTLOG_ADAPTERS: dict[str, str] = {
    "sqlite": "personify.eventlog.sqlite:SQLiteEventLog",
    "redis": "personify.eventlog.redis:RedisEventLog",
    "kafka": "personify.eventlog.kafka:KafkaEventLog",
}

CACHE_ADAPTERS: dict[str, str] = {
    "memory": "personify.cache.memory:MemoryCache",
    "redis": "personify.cache.redis:RedisCache",
}

# the extra that brings each optional engine, for the error message
_EXTRAS = {"redis": "redis", "kafka": "kafka", "postgresql": "postgres"}

_DAY_S = 24 * 3600.0
_KAFKA_PORT = 9092
_REDIS_STREAM = "events"


@dataclass(frozen=True, slots=True)
class SQLiteLogConfig:
    """The SQLite event log: its file, durability, group-commit bounds and dedupe index."""

    path: Path
    durability: str = "full"
    linger_ms: float = 0.0
    max_batch_events: int = 5000
    max_pending_events: int = 50_000
    dedupe_window_s: float = _DAY_S
    dedupe_memory_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RedisLogConfig:
    """The Redis Streams event log: the connection URL (without ``stream``) and the stream."""

    url: str
    stream: str = _REDIS_STREAM
    dedupe_window_s: float = _DAY_S
    max_entries: int = 1_000_000
    claim_idle_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class KafkaLogConfig:
    """The Kafka event log: brokers, topic, producer and consumer settings, dedupe index."""

    bootstrap_servers: str
    topic: str
    dedupe_url: str = ""
    partitions: int = 12
    replication_factor: int = -1
    dedupe_window_s: float = _DAY_S
    linger_ms: float = 5.0
    session_timeout_ms: int = 45_000
    fetch_wait_ms: int = 100
    delivery_timeout_ms: int = 30_000
    delete_records: bool = True


EventLogConfig = SQLiteLogConfig | RedisLogConfig | KafkaLogConfig


def scheme_of(url: str) -> str:
    """The URL's scheme without a driver suffix (``postgresql+psycopg`` -> ``postgresql``)."""
    return urlsplit(url).scheme.split("+", 1)[0]


def load_adapter(table: dict[str, str], url: str, port: str) -> Any:
    """Import and return the adapter class registered for ``url``'s scheme."""
    scheme = scheme_of(url)
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigurationError(
            f"no {port} backend for {scheme or 'an empty'}:// URL {url!r}; use one of {known}",
            code="unknown_backend",
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(scheme, scheme)
        raise ConfigurationError(
            f"the {scheme}:// {port} needs the {exc.name!r} package: "
            f"pip install 'personify[{extra}]'",
            code="missing_extra",
        ) from exc
    return getattr(module, class_name)


def eventlog_config(url: str, settings: Settings) -> EventLogConfig:
    """The config of the event-log adapter that ``url`` names, from ``url`` and ``settings``."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        return sqlite_log_config(url, settings)
    if scheme == "redis":
        return redis_log_config(url, settings)
    if scheme == "kafka":
        return kafka_log_config(url, settings)
    known = ", ".join(f"{s}://" for s in sorted(EVENTLOG_ADAPTERS))
    raise ConfigurationError(
        f"no event log backend for {scheme or 'an empty'}:// URL {url!r}; use one of {known}",
        code="unknown_backend",
    )


def sqlite_log_config(url: str, settings: Settings) -> SQLiteLogConfig:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    parts = urlsplit(url)
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not raw:
        raise ConfigurationError(f"sqlite event log URL {url!r} names no file")
    return SQLiteLogConfig(
        Path(raw),
        durability=settings.eventlog_durability,
        linger_ms=settings.eventlog_linger_ms,
        max_batch_events=settings.eventlog_max_batch_events,
        max_pending_events=settings.eventlog_max_pending_events,
        dedupe_window_s=settings.dedupe_window_hours * 3600.0,
        dedupe_memory_bytes=round(settings.eventlog_dedupe_memory_mb * 1024 * 1024),
    )


def redis_log_config(url: str, settings: Settings) -> RedisLogConfig:
    """``redis://host:6379/0?stream=events``; other query parameters go to redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    stream = next((v for k, v in query if k == "stream"), _REDIS_STREAM)
    rest = urlencode([(k, v) for k, v in query if k != "stream"])
    return RedisLogConfig(
        urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")),
        stream=stream,
        dedupe_window_s=settings.dedupe_window_hours * 3600.0,
        max_entries=settings.eventlog_stream_max_entries,
        claim_idle_ms=settings.eventlog_claim_idle_ms,
    )


def kafka_log_config(url: str, settings: Settings) -> KafkaLogConfig:
    """``kafka://host:9092/topic?partitions=N`` (several brokers: ``kafka://h1,h2/topic``)."""
    parts = urlsplit(url)
    hosts = [h if ":" in h else f"{h}:{_KAFKA_PORT}" for h in parts.netloc.split(",") if h]
    if not hosts:
        raise ConfigurationError(f"kafka event log URL {url!r} names no broker")
    query = dict(parse_qsl(parts.query))
    try:
        partitions = int(query.get("partitions", settings.eventlog_kafka_partitions))
    except ValueError as exc:
        raise ConfigurationError(
            f"kafka event log URL {url!r}: partitions must be a number"
        ) from exc
    return KafkaLogConfig(
        ",".join(hosts),
        parts.path.strip("/"),
        dedupe_url=settings.eventlog_dedupe_url,
        partitions=partitions,
        replication_factor=settings.eventlog_kafka_replication_factor,
        dedupe_window_s=settings.dedupe_window_hours * 3600.0,
        linger_ms=settings.eventlog_kafka_linger_ms,
        session_timeout_ms=settings.eventlog_kafka_session_timeout_ms,
        fetch_wait_ms=settings.eventlog_kafka_fetch_wait_ms,
        delivery_timeout_ms=settings.eventlog_kafka_delivery_timeout_ms,
        delete_records=settings.eventlog_kafka_delete_records,
    )
