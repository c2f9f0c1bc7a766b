"""The event log on a Kafka topic, read by Kafka consumer groups (confluent-kafka).

URL: ``kafka://host:9092/topic?partitions=N`` (several brokers: ``kafka://h1:9092,h2:9092/t``).
``start`` creates the topic when it is missing, with N partitions (else
``eventlog_kafka_partitions``). ``LogEntry.partition``/``offset`` are Kafka's; an
``AppendResult.offset`` reads ``"<partition>:<offset>"``. ``appended_at`` is the record
timestamp (the producer's clock, or the broker's with ``LogAppendTime`` topics).

* **Append.** An idempotent producer (``enable.idempotence``, ``acks=all``) keyed by
  ``LogRecord.key`` with the Java-compatible murmur2 partitioner, so one user's events land
  in one partition, in order, without duplicates from producer retries. ``produce`` never
  blocks; a thread serves the delivery reports and ``append`` awaits them.
* **Dedupe.** Kafka cannot check and append in one step, so the dedupe index lives in Redis
  (``eventlog_dedupe_url``, required): keys are looked up before producing and set (``SET NX``,
  TTL = the dedupe window) once the broker acknowledged. A crash between the acknowledgement
  and the mark, a failed mark, or two concurrent appends of one key can leave a duplicate in
  the log; the worker's ``messageId`` idempotency absorbs it.
* **Read/commit.** One consumer per (group, consumer) with ``enable.auto.commit=false``;
  ``commit`` commits synchronously, per partition, the offset after the highest entry, and
  never moves a partition's committed offset backwards. On a rebalance librdkafka drops the
  revoked partitions' positions and fetch queues; the new owner starts at the committed
  offsets, so uncommitted entries are delivered again (the worker is idempotent). A commit
  for a partition this consumer no longer owns is dropped for the same reason.
* **Delivery count.** Kafka keeps no per-record delivery counter: ``delivery_count`` is
  always 1, and poison entries must be caught by the worker's own retry limit.
* **Lag** = sum over partitions of high watermark - committed offset. The high watermark
  is taken from a fetch response, not from ListOffsets: tansu answers ListOffsets(latest)
  with the last batch's base offset + 1, which undercounts after batched appends.
* **Truncate** deletes (``DeleteRecords``) below the lowest committed offset of every group
  that commits to or is assigned this topic. Set ``eventlog_kafka_delete_records=false`` for
  brokers without DeleteRecords (tansu's in-memory engine closes the connection on it):
  ``truncate`` then returns 0 and retention settings bound the topic instead. A broker that
  answers "unsupported" gets the same treatment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, LogEntry, LogRecord
from personify.redis_pool import RedisError, aioredis, pooled_client

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
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the kafka:// event log needs the 'confluent-kafka' package: "
        "pip install 'personify[kafka]'",
        code="missing_extra",
    ) from exc

if TYPE_CHECKING:
    from personify.settings import Settings

logger = logging.getLogger("personify.eventlog")

T = TypeVar("T")

_DEFAULT_PORT = 9092
_ADMIN_TIMEOUT_S = 15.0
_PROBE_TIMEOUT_S = 10.0
_TOPIC_READY_TIMEOUT_S = 15.0
_DEDUPE_CONNECTIONS = 32  # overridable with ?max_connections=N in the dedupe URL
_DEDUPE_WAIT_S = 10.0
# a commit that fails for these reasons lost its partitions to a rebalance
_OWNERSHIP_LOST = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
}
_UNSUPPORTED = {KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE}


def _error_code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _unavailable(action: str, exc: BaseException | KafkaError) -> BackendUnavailable:
    return BackendUnavailable(
        f"the Kafka event log could not {action}: {exc}", code="log_unavailable"
    )


def _settle(future: asyncio.Future[str], error: KafkaError | None, offset: str) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(_unavailable("append", error))
    else:
        future.set_result(offset)


def _entry(message: Message) -> LogEntry:
    _kind, timestamp_ms = message.timestamp()
    key = message.key()
    return LogEntry(
        partition=message.partition() or 0,
        offset=str(message.offset()),
        key=key.decode() if isinstance(key, bytes) else str(key or ""),
        payload=bytes(message.value() or b""),
        appended_at=timestamp_ms / 1000.0 if timestamp_ms and timestamp_ms > 0 else time.time(),
    )


class _Thread:
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


class _Member:
    """One consumer in one group: its own librdkafka consumer and thread."""

    def __init__(self, topic: str, group: str, name: str, config: dict[str, Any]) -> None:
        self.topic = topic
        self.group = group
        self.name = name
        self.thread = _Thread(f"kafka-{group}-{name}")
        self.consumer = KafkaConsumer({**config, "group.id": group, "client.id": name})
        # replaced, never mutated: other threads read it while rebalances run
        self.owned: frozenset[int] = frozenset()
        # committed offsets this member knows; a commit never moves one backwards
        self.committed: dict[int, int] = {}

    def subscribe(self) -> None:
        """Join the group; the assignment arrives during a later ``poll``."""
        self.consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.owned = self.owned | {tp.partition for tp in partitions}

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # the positions of revoked partitions go with them: their next owner starts at the
        # committed offsets, so what we read but did not commit is delivered again
        lost = {tp.partition for tp in partitions}
        self.owned = self.owned - lost
        for partition in lost:
            self.committed.pop(partition, None)

    def poll(self, max_count: int, timeout_s: float) -> list[LogEntry]:
        """Wait up to ``timeout_s`` for one entry, then take what else is already fetched."""
        first = self.consumer.poll(timeout_s)
        if first is None:
            return []
        messages = [first]
        if max_count > 1:
            messages.extend(self.consumer.consume(max_count - 1, 0))
        entries: list[LogEntry] = []
        errors: list[KafkaError] = []
        for message in messages:
            error = message.error()
            if error is None:
                entries.append(_entry(message))
            elif error.code() != KafkaError._PARTITION_EOF:
                errors.append(error)
        if errors and not entries:
            raise _unavailable("read", errors[0])
        for error in errors:
            logger.warning("Kafka consumer %s/%s: %s", self.group, self.name, error)
        return entries

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit ``partition -> next offset`` for the partitions this member still owns."""
        wanted = {p: o for p, o in offsets.items() if p in self.owned}
        unknown = [TopicPartition(self.topic, p) for p in wanted if p not in self.committed]
        if unknown:
            for tp in self.consumer.committed(unknown, timeout=_ADMIN_TIMEOUT_S):
                self.committed[tp.partition] = tp.offset if tp.offset >= 0 else -1
        wanted = {p: o for p, o in wanted.items() if o > self.committed.get(p, -1)}
        if not wanted:
            return
        try:
            done = self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in sorted(wanted.items())],
                asynchronous=False,
            )
        except KafkaException as exc:
            if _error_code(exc) in _OWNERSHIP_LOST:
                logger.info(
                    "commit of %s/%s dropped after a rebalance: %s", self.group, self.name, exc
                )
                return
            raise
        for tp in done or []:
            if tp.error is None:
                self.committed[tp.partition] = max(self.committed.get(tp.partition, -1), tp.offset)
            elif tp.error.code() not in _OWNERSHIP_LOST:
                raise KafkaException(tp.error)

    def close(self) -> None:
        """Leave the group (without committing) and close the consumer."""
        self.consumer.close()


class KafkaEventLog:
    """The ``EventLog`` on one Kafka topic with consumer groups and a Redis dedupe index."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        dedupe_url: str,
        partitions: int = 12,
        replication_factor: int = -1,
        dedupe_window_s: float = 24 * 3600.0,
        linger_ms: float = 5.0,
        session_timeout_ms: int = 45_000,
        fetch_wait_ms: int = 100,
        delivery_timeout_ms: int = 30_000,
        delete_records: bool = True,
    ) -> None:
        if not topic or "/" in topic:
            raise ConfigurationError(f"kafka event log topic {topic!r} is not a topic name")
        if partitions < 1:
            raise ConfigurationError("a Kafka event log topic needs at least one partition")
        if not dedupe_url:
            raise ConfigurationError(
                "the kafka:// event log keeps its dedupe index in Redis: set "
                "PERSONIFY_EVENTLOG_DEDUPE_URL (e.g. redis://127.0.0.1:6379/0)",
                code="missing_dedupe_url",
            )
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self._replication_factor = replication_factor
        self._dedupe_url = dedupe_url
        self._dedupe_ttl_ms = max(1, round(dedupe_window_s * 1000))
        self._linger_ms = linger_ms
        self._session_timeout_ms = session_timeout_ms
        self._fetch_wait_ms = fetch_wait_ms
        self._delivery_timeout_ms = delivery_timeout_ms
        self._delete_records = delete_records
        self._admin: AdminClient | None = None
        self._producer: KafkaProducer | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._dedupe: aioredis.Redis | None = None
        self._members: dict[tuple[str, str], _Member] = {}
        self._members_lock = asyncio.Lock()
        self._probe: KafkaConsumer | None = None
        self._probe_thread: _Thread | None = None
        self._admin_thread: _Thread | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> KafkaEventLog:
        """``kafka://host:9092/topic?partitions=N``."""
        parts = urlsplit(url)
        hosts = [h if ":" in h else f"{h}:{_DEFAULT_PORT}" for h in parts.netloc.split(",") if h]
        if not hosts:
            raise ConfigurationError(f"kafka event log URL {url!r} names no broker")
        query = dict(parse_qsl(parts.query))
        try:
            partitions = int(query.get("partitions", settings.eventlog_kafka_partitions))
        except ValueError as exc:
            raise ConfigurationError(
                f"kafka event log URL {url!r}: partitions must be a number"
            ) from exc
        return cls(
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

    @property
    def dedupe_prefix(self) -> str:
        """Where this topic's dedupe keys live in Redis."""
        return f"personify:kafka:{self.topic}:dedupe:"

    # -- lifecycle ---------------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self._session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(3000, self._session_timeout_ms // 3)),
            "fetch.wait.max.ms": self._fetch_wait_ms,
            "logger": logger,
        }

    async def start(self) -> None:
        """Create the topic if missing, then connect the producer and the dedupe index."""
        if self._producer is not None:
            return
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        self._admin_thread = _Thread(f"kafka-admin-{self.topic}")
        dedupe = pooled_client(
            self._dedupe_url, max_connections=_DEDUPE_CONNECTIONS, wait_s=_DEDUPE_WAIT_S
        )
        try:
            await self._admin_thread.run(self._ensure_topic)
            await dedupe.ping()
        except (BackendUnavailable, RedisError) as exc:
            await dedupe.aclose()
            self._admin_thread.shutdown()
            self._admin = self._admin_thread = None
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(
                f"the Kafka event log's dedupe index at {self._dedupe_url} is unreachable: {exc}",
                code="log_unavailable",
            ) from exc
        self._dedupe = dedupe
        self._producer = KafkaProducer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self._linger_ms,
                # the Java client's partitioner: a key maps to the same partition everywhere
                "partitioner": "murmur2_random",
                "delivery.timeout.ms": self._delivery_timeout_ms,
                "logger": logger,
            }
        )
        self._stop_polling.clear()
        self._poller = threading.Thread(
            target=self._serve_delivery_reports, name=f"kafka-producer-{self.topic}", daemon=True
        )
        self._poller.start()

    def _ensure_topic(self) -> None:
        admin = self._require(self._admin)
        try:
            existing = admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics
            if self.topic not in existing:
                topic = NewTopic(
                    self.topic,
                    num_partitions=self.partitions,
                    replication_factor=self._replication_factor,
                )
                for future in admin.create_topics(
                    [topic], request_timeout=_ADMIN_TIMEOUT_S
                ).values():
                    try:
                        future.result(timeout=_ADMIN_TIMEOUT_S)
                    except KafkaException as exc:
                        if _error_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
            deadline = time.monotonic() + _TOPIC_READY_TIMEOUT_S
            while True:
                metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics.get(self.topic)
                if metadata is not None and metadata.error is None and metadata.partitions:
                    self.partitions = len(metadata.partitions)
                    return
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"Kafka topic {self.topic!r} did not appear", code="log_unavailable"
                    )
                time.sleep(0.1)
        except KafkaException as exc:
            raise _unavailable(f"create topic {self.topic!r}", exc) from exc

    def _serve_delivery_reports(self) -> None:
        producer = self._producer
        while producer is not None and not self._stop_polling.is_set():
            producer.poll(0.05)

    async def close(self) -> None:
        """Flush pending appends, leave the consumer groups, release connections."""
        members, self._members = list(self._members.values()), {}
        for member in members:
            try:
                await member.thread.run(member.close)
            except KafkaException as exc:
                # the group notices a silent member after the session timeout instead
                logger.warning(
                    "Kafka consumer %s/%s did not leave cleanly: %s", member.group, member.name, exc
                )
            member.thread.shutdown()
        if self._probe is not None and self._probe_thread is not None:
            with contextlib.suppress(KafkaException):
                await self._probe_thread.run(self._probe.close)
            self._probe_thread.shutdown()
        self._probe = self._probe_thread = None
        producer, self._producer = self._producer, None
        if producer is not None:
            self._stop_polling.set()
            if self._poller is not None:
                await asyncio.to_thread(self._poller.join)
            left = await asyncio.to_thread(producer.flush, self._delivery_timeout_ms / 1000.0)
            if left:
                logger.error("Kafka event log closed with %d appends undelivered", left)
        if self._admin_thread is not None:
            self._admin_thread.shutdown()
        self._admin = self._admin_thread = None
        dedupe, self._dedupe = self._dedupe, None
        if dedupe is not None:
            with contextlib.suppress(RedisError):
                await dedupe.aclose()

    @staticmethod
    def _require(client: T | None) -> T:
        if client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return client

    # -- append ------------------------------------------------------------------------------

    async def _known_duplicates(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        dedupe = self._require(self._dedupe)
        try:
            values: list[Any] = await dedupe.mget([self.dedupe_prefix + k for k in keys])
        except RedisError as exc:
            raise _unavailable("check its dedupe index", exc) from exc
        return {k: bytes(v).decode() for k, v in zip(keys, values, strict=True) if v is not None}

    async def _mark(self, marks: dict[str, str]) -> None:
        if not marks:
            return
        dedupe = self._require(self._dedupe)
        try:
            async with dedupe.pipeline(transaction=False) as pipe:
                for key, offset in marks.items():
                    pipe.set(self.dedupe_prefix + key, offset, nx=True, px=self._dedupe_ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            # the records are in the log already; failing now would only make the client send
            # them again. Without the marks a retry may duplicate them, which the worker absorbs.
            logger.warning("Kafka event log: %d dedupe keys not recorded: %s", len(marks), exc)

    def append_one(self, record: LogRecord) -> Awaitable[list[AppendResult]]:
        """``append([record])``: one record, durable once awaited."""
        return self.append([record])

    async def append_counted(self, records: Sequence[LogRecord]) -> int:
        """``append``, resolving to how many of ``records`` were duplicates."""
        return sum(result.duplicate for result in await self.append(records))

    async def append(self, records: Sequence[LogRecord]) -> list[AppendResult]:
        """Produce and wait for the broker's acknowledgement; one result per record, in order."""
        if not records:
            return []
        producer = self._require(self._producer)
        first_of: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        for index, record in enumerate(records):
            if record.dedupe_key is None:
                continue
            if record.dedupe_key in first_of:
                repeats.append((index, first_of[record.dedupe_key]))
            else:
                first_of[record.dedupe_key] = index
        known = await self._known_duplicates(list(first_of))
        offsets: list[str | None] = [None] * len(records)
        duplicate = [False] * len(records)
        for key, offset in known.items():
            offsets[first_of[key]] = offset
            duplicate[first_of[key]] = True
        repeated = {index for index, _ in repeats}

        loop = asyncio.get_running_loop()
        sent: list[tuple[int, asyncio.Future[str]]] = []
        refused: BackendUnavailable | None = None
        for index, record in enumerate(records):
            if duplicate[index] or index in repeated:
                continue
            future: asyncio.Future[str] = loop.create_future()
            try:
                producer.produce(
                    self.topic,
                    value=record.payload,
                    key=record.key.encode(),
                    on_delivery=functools.partial(self._delivered, loop, future),
                )
            except BufferError as exc:
                refused = BackendUnavailable(
                    "the Kafka producer queue is full; retry shortly", code="log_overloaded"
                )
                refused.__cause__ = exc
                break
            except KafkaException as exc:
                refused = _unavailable("append", exc)
                refused.__cause__ = exc
                break
            sent.append((index, future))

        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        marks: dict[str, str] = {}
        failure: BaseException | None = None
        for (index, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                continue
            offsets[index] = outcome
            dedupe_key = records[index].dedupe_key
            if dedupe_key is not None:
                marks[dedupe_key] = outcome
        await self._mark(marks)
        # what was produced before a refusal is in the log and marked; the caller retries the
        # rest (and, deduplicated, the rest only)
        if refused is not None:
            raise refused
        if failure is not None:
            raise failure
        for index, first in repeats:
            offsets[index] = offsets[first]
            duplicate[index] = True
        return [
            AppendResult(str(offset), is_duplicate)
            for offset, is_duplicate in zip(offsets, duplicate, strict=True)
        ]

    @staticmethod
    def _delivered(
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[str],
        error: KafkaError | None,
        message: Message,
    ) -> None:
        offset = "" if error is not None else f"{message.partition()}:{message.offset()}"
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, error, offset)

    # -- read side ---------------------------------------------------------------------------

    async def _member(self, group: str, consumer: str) -> _Member:
        async with self._members_lock:
            member = self._members.get((group, consumer))
            if member is None:
                self._require(self._producer)
                member = _Member(self.topic, group, consumer, self._consumer_config())
                try:
                    await member.thread.run(member.subscribe)
                except KafkaException as exc:
                    member.thread.shutdown()
                    raise _unavailable("join its consumer group", exc) from exc
                self._members[(group, consumer)] = member
            return member

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """Entries after this consumer's positions (the group's commits when it joins)."""
        member = await self._member(group, consumer)
        try:
            return await member.thread.run(
                member.poll, max(1, max_count), max(timeout_ms, 0) / 1000.0
            )
        except KafkaException as exc:
            raise _unavailable("read", exc) from exc

    def owned_partitions(self, group: str, consumer: str) -> frozenset[int]:
        """The partitions the group's coordinator gave this consumer at its last rebalance."""
        member = self._members.get((group, consumer))
        return member.owned if member is not None else frozenset()

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Commit, per partition, the offset after the highest entry given."""
        if not entries:
            return
        offsets: dict[int, int] = {}
        for entry in entries:
            offsets[entry.partition] = max(offsets.get(entry.partition, 0), int(entry.offset) + 1)
        member = self._members.get((group, consumer))
        if member is None:
            # joining the group just to commit would start a rebalance; not committing only
            # means these entries are delivered again (at least once)
            logger.warning(
                "commit for %s/%s, which has read nothing from this log, is dropped",
                group,
                consumer,
            )
            return
        try:
            await member.thread.run(member.commit, offsets)
        except KafkaException as exc:
            raise _unavailable("commit", exc) from exc

    # -- offsets, lag, truncate, tail ----------------------------------------------------------

    async def _in_probe(self, fn: Callable[[KafkaConsumer], T]) -> T:
        if self._probe_thread is None:
            self._require(self._producer)
            self._probe_thread = _Thread(f"kafka-probe-{self.topic}")
        if self._probe is None:
            # never joins or commits: a group id is required by the client, nothing more
            self._probe = KafkaConsumer(
                {
                    **self._consumer_config(),
                    "group.id": f"personify-probe-{uuid.uuid4().hex}",
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                }
            )
        try:
            return await self._probe_thread.run(fn, self._probe)
        except KafkaException as exc:
            raise _unavailable("read offsets", exc) from exc

    def _partition_ids(self, probe: KafkaConsumer) -> list[int]:
        topic = probe.list_topics(self.topic, timeout=_ADMIN_TIMEOUT_S).topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise BackendUnavailable(
                f"Kafka topic {self.topic!r} is missing", code="log_unavailable"
            )
        return sorted(topic.partitions)

    def _drain_probe(self, probe: KafkaConsumer, start: dict[int, int]) -> list[Message]:
        """Read each partition from ``start`` to its end; returns the messages."""
        if not start:
            return []
        probe.assign([TopicPartition(self.topic, p, o) for p, o in start.items()])
        waiting = set(start)
        messages: list[Message] = []
        deadline = time.monotonic() + _PROBE_TIMEOUT_S
        try:
            while waiting:
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"Kafka did not serve partitions {sorted(waiting)} of {self.topic!r}",
                        code="log_unavailable",
                    )
                message = probe.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    waiting.discard(message.partition() or 0)
                else:
                    raise KafkaException(error)
        finally:
            probe.unassign()
        return messages

    def _ends(self, probe: KafkaConsumer) -> dict[int, tuple[int, int]]:
        """Each partition's (low, high) watermarks, the high one as a fetch reports it."""
        bounds: dict[int, tuple[int, int]] = {}
        for p in self._partition_ids(probe):
            low, high = probe.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=_ADMIN_TIMEOUT_S, cached=False
            )
            bounds[p] = (int(low), int(high))
        # fetch from the last offset ListOffsets reports: the fetch response's high watermark
        # is right even where ListOffsets points into the last batch (tansu)
        start = {p: max(low, high - 1) for p, (low, high) in bounds.items() if high > low}
        self._drain_probe(probe, start)
        for p in start:
            low, high = probe.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            bounds[p] = (bounds[p][0], max(int(high), bounds[p][1]))
        return bounds

    def _group_offsets(self, group: str, partitions: Sequence[int]) -> dict[int, int]:
        """The group's committed offset per partition (partitions without one are left out)."""
        admin = self._require(self._admin)
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(self.topic, p) for p in partitions]
        )
        futures = admin.list_consumer_group_offsets([request], request_timeout=_ADMIN_TIMEOUT_S)
        committed: dict[int, int] = {}
        for future in futures.values():
            for tp in future.result(timeout=_ADMIN_TIMEOUT_S).topic_partitions or []:
                if tp.topic == self.topic and tp.error is None and tp.offset != OFFSET_INVALID:
                    committed[tp.partition] = int(tp.offset)
        return committed

    async def lag(self, group: str) -> int:
        """Sum over partitions of high watermark minus the group's committed offset."""
        ends = await self._in_probe(self._ends)
        assert self._admin_thread is not None
        try:
            committed = await self._admin_thread.run(self._group_offsets, group, list(ends))
        except KafkaException as exc:
            raise _unavailable("read committed offsets", exc) from exc
        return sum(max(0, high - committed.get(p, low)) for p, (low, high) in ends.items())

    def _readers(self) -> list[str]:
        """Groups that commit to this topic or are assigned its partitions."""
        admin = self._require(self._admin)
        listing = admin.list_consumer_groups(request_timeout=_ADMIN_TIMEOUT_S).result(
            timeout=_ADMIN_TIMEOUT_S
        )
        names = [g.group_id for g in listing.valid]
        if not names:
            return []
        readers: list[str] = []
        described = admin.describe_consumer_groups(names, request_timeout=_ADMIN_TIMEOUT_S)
        for name, future in described.items():
            description = future.result(timeout=_ADMIN_TIMEOUT_S)
            if any(
                tp.topic == self.topic
                for member in description.members
                for tp in (member.assignment.topic_partitions if member.assignment else [])
            ):
                readers.append(name)
        for name in names:
            if name not in readers and self._group_offsets(name, range(self.partitions)):
                readers.append(name)
        return readers

    def _delete_below(self, ends: dict[int, tuple[int, int]]) -> int:
        readers = self._readers()
        if not readers:
            return 0
        floor = {p: high for p, (_low, high) in ends.items()}
        for group in readers:
            committed = self._group_offsets(group, list(ends))
            for p, (low, _high) in ends.items():
                floor[p] = min(floor[p], committed.get(p, low))
        targets = [TopicPartition(self.topic, p, o) for p, o in floor.items() if o > ends[p][0]]
        if not targets:
            return 0
        admin = self._require(self._admin)
        removed = 0
        for tp, future in admin.delete_records(targets, request_timeout=_ADMIN_TIMEOUT_S).items():
            try:
                result = future.result(timeout=_ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                if _error_code(exc) in _UNSUPPORTED:
                    logger.warning("the Kafka broker cannot delete records: %s", exc)
                    continue
                raise
            removed += max(0, int(result.low_watermark) - ends[tp.partition][0])
        return removed

    async def truncate(self) -> int:
        """Delete the records every known group has committed; returns how many went.

        Returns 0 without asking when ``eventlog_kafka_delete_records`` is off (brokers
        without DeleteRecords, like tansu's memory engine).
        """
        if not self._delete_records:
            return 0
        ends = await self._in_probe(self._ends)
        assert self._admin_thread is not None
        try:
            return await self._admin_thread.run(self._delete_below, ends)
        except KafkaException as exc:
            raise _unavailable("delete records", exc) from exc

    def _newest(self, probe: KafkaConsumer, limit: int) -> list[LogEntry]:
        ends = self._ends(probe)
        start = {p: max(low, high - limit) for p, (low, high) in ends.items() if high > low}
        entries = [_entry(m) for m in self._drain_probe(probe, start)]
        entries.sort(key=lambda e: (e.appended_at, e.partition, int(e.offset)))
        return entries[-limit:]

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries across partitions by append time, oldest first."""
        if limit <= 0:
            return []
        return await self._in_probe(functools.partial(self._newest, limit=limit))
