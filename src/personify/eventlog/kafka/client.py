"""The confluent-kafka client, imported in one place, and what the Kafka log's parts share:
error mapping, the entry a message becomes, and a thread that owns a client."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import LogEntry

try:
    from confluent_kafka import (
        OFFSET_INVALID,
        ConsumerGroupTopicPartitions,
        KafkaError,
        KafkaException,
        Message,
        TopicPartition,
    )
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import Producer as KafkaProducer

    # public names of confluent_kafka.admin that its stubs do not re-export
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]
    from confluent_kafka.cimpl import NewTopic
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the kafka:// event log needs the 'confluent-kafka' package: "
        "pip install 'personify[kafka]'",
        code="missing_extra",
    ) from exc

__all__ = [
    "OFFSET_INVALID",
    "AdminClient",
    "ClientThread",
    "ConfigResource",
    "ConsumerGroupTopicPartitions",
    "KafkaConsumer",
    "KafkaError",
    "KafkaException",
    "KafkaProducer",
    "Message",
    "NewTopic",
    "ResourceType",
    "TopicPartition",
    "entry_of",
    "error_code",
    "unavailable",
]

T = TypeVar("T")

ADMIN_TIMEOUT_S = 15.0
# a commit that fails for these reasons lost its partitions to a rebalance
OWNERSHIP_LOST = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
}
UNSUPPORTED = {KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE}


def error_code(exc: KafkaException) -> int | None:
    """The ``KafkaError`` code an exception carries, if any."""
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def unavailable(action: str, exc: BaseException | KafkaError) -> BackendUnavailable:
    """The ``BackendUnavailable`` for a failed ``action``."""
    return BackendUnavailable(
        f"the Kafka event log could not {action}: {exc}", code="log_unavailable"
    )


def entry_of(message: Message) -> LogEntry:
    """A consumed message as a log entry."""
    _kind, timestamp_ms = message.timestamp()
    key = message.key()
    return LogEntry(
        partition=message.partition() or 0,
        offset=str(message.offset()),
        key=key.decode() if isinstance(key, bytes) else str(key or ""),
        payload=bytes(message.value() or b""),
        appended_at=timestamp_ms / 1000.0 if timestamp_ms and timestamp_ms > 0 else time.time(),
    )


class ClientThread:
    """One thread that owns a client: librdkafka calls on it never block the event loop."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def shutdown(self) -> None:
        """Finish what is queued and stop the thread."""
        self._executor.shutdown(wait=True)
