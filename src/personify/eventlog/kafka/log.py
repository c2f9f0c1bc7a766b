"""The ``EventLog`` adapter on one Kafka topic (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, EraseReport, LogEntry, LogRecord
from personify.eventlog.kafka.client import (
    ADMIN_TIMEOUT_S,
    AdminClient,
    ClientThread,
    KafkaError,
    KafkaException,
    KafkaProducer,
    Message,
    NewTopic,
    error_code,
    unavailable,
)
from personify.eventlog.kafka.dedupe import RedisDedupeIndex
from personify.eventlog.kafka.members import Member
from personify.eventlog.kafka.probes import TopicProbe
from personify.registry import KafkaLogConfig, kafka_log_config

if TYPE_CHECKING:
    from personify.settings import Settings

logger = logging.getLogger("personify.eventlog")

T = TypeVar("T")

_TOPIC_READY_TIMEOUT_S = 15.0
# a readiness probe's metadata request: a broker that does not answer in this is not ready
_PING_TIMEOUT_S = 2.0
# how often delivery reports are served while appends wait for them; it adds at most this
# much to an append's latency, on top of linger.ms and the broker's round trip
_POLL_INTERVAL_S = 0.001


class _Deliveries:
    """The delivery reports of one ``append``; its future is done once every record has one.

    Reports are served by ``poll`` on the event loop's own thread
    (``KafkaEventLog._serve_delivery_reports``), so settling needs no lock and no cross-thread
    wake-up; only ``close``'s final flush, on another thread, hands the result over with
    ``call_soon_threadsafe``.
    """

    __slots__ = ("_expected", "_reported", "_thread", "error", "future", "loop", "offsets")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        # "" stays for a record whose delivery failed (or that was never produced)
        self.offsets = [""] * size
        self.error: KafkaError | None = None
        self._thread = threading.get_ident()
        self._reported = 0
        self._expected = -1  # unknown until every produce() of the batch returned

    def report(self, slot: int, error: KafkaError | None, message: Message) -> None:
        """One record's delivery report."""
        if error is None:
            self.offsets[slot] = f"{message.partition()}:{message.offset()}"
        elif self.error is None:
            self.error = error
        self._reported += 1
        if self._reported == self._expected:
            if threading.get_ident() == self._thread:
                self._settle()
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    self.loop.call_soon_threadsafe(self._settle)

    def expect(self, produced: int) -> None:
        """Every produce() returned: ``produced`` reports will come."""
        self._expected = produced
        if self._reported == produced:
            self._settle()

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaEventLog:
    """The ``EventLog`` on one Kafka topic with consumer groups and a Redis dedupe index."""

    def __init__(self, config: KafkaLogConfig) -> None:
        if not config.topic or "/" in config.topic:
            raise ConfigurationError(f"kafka event log topic {config.topic!r} is not a topic name")
        if config.partitions < 1:
            raise ConfigurationError("a Kafka event log topic needs at least one partition")
        self.config = config
        self.bootstrap_servers = config.bootstrap_servers
        self.topic = config.topic
        self.partitions = config.partitions
        self._dedupe = RedisDedupeIndex(
            config.dedupe_url, config.topic, window_s=config.dedupe_window_s
        )
        self._admin: AdminClient | None = None
        self._producer: KafkaProducer | None = None
        # appends awaiting delivery reports, and the task that serves them while there are any
        self._in_flight = 0
        self._pump: asyncio.Task[None] | None = None
        self._members: dict[tuple[str, str], Member] = {}
        self._members_lock = asyncio.Lock()
        self._probe: TopicProbe | None = None
        self._admin_thread: ClientThread | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> KafkaEventLog:
        """``kafka://host:9092/topic?partitions=N``."""
        return cls(kafka_log_config(url, settings))

    @property
    def dedupe_prefix(self) -> str:
        """Where this topic's dedupe keys live in Redis."""
        return self._dedupe.prefix

    # -- lifecycle ---------------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.config.session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(3000, self.config.session_timeout_ms // 3)),
            "fetch.wait.max.ms": self.config.fetch_wait_ms,
            "logger": logger,
        }

    async def start(self) -> None:
        """Create the topic if missing, then connect the producer and the dedupe index."""
        if self._producer is not None:
            return
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        self._admin_thread = ClientThread(f"kafka-admin-{self.topic}")
        try:
            await self._admin_thread.run(self._ensure_topic)
            await self._dedupe.start()
        except BackendUnavailable:
            self._admin_thread.shutdown()
            self._admin = self._admin_thread = None
            raise
        self._probe = TopicProbe(
            self.topic,
            self.partitions,
            self._admin,
            self._admin_thread,
            self._consumer_config(),
            delete_records=self.config.delete_records,
        )
        self._producer = KafkaProducer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.config.linger_ms,
                # the Java client's partitioner: a key maps to the same partition everywhere
                "partitioner": "murmur2_random",
                "delivery.timeout.ms": self.config.delivery_timeout_ms,
                "logger": logger,
            }
        )

    def _ensure_topic(self) -> None:
        admin = self._require(self._admin)
        try:
            existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
            if self.topic not in existing:
                topic = NewTopic(
                    self.topic,
                    num_partitions=self.partitions,
                    replication_factor=self.config.replication_factor,
                )
                for future in admin.create_topics(
                    [topic], request_timeout=ADMIN_TIMEOUT_S
                ).values():
                    try:
                        future.result(timeout=ADMIN_TIMEOUT_S)
                    except KafkaException as exc:
                        if error_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
            deadline = time.monotonic() + _TOPIC_READY_TIMEOUT_S
            while True:
                metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics.get(self.topic)
                if metadata is not None and metadata.error is None and metadata.partitions:
                    self.partitions = len(metadata.partitions)
                    return
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"Kafka topic {self.topic!r} did not appear", code="log_unavailable"
                    )
                time.sleep(0.1)
        except KafkaException as exc:
            raise unavailable(f"create topic {self.topic!r}", exc) from exc

    async def _serve_delivery_reports(self, producer: KafkaProducer) -> None:
        # poll(0) never blocks, and the reports' callbacks run here, on the loop's thread: a
        # thread blocked in poll() would take the GIL back once per record to run them,
        # contending with the loop for it
        while self._in_flight and self._producer is producer:
            try:
                producer.poll(0)
            except KafkaException as exc:
                # a fatal producer error: the waiting records still get (failed) reports
                logger.error("Kafka producer for %s: %s", self.topic, exc)
            await asyncio.sleep(_POLL_INTERVAL_S)

    def _ensure_pump(self, producer: KafkaProducer) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(
                self._serve_delivery_reports(producer), name=f"kafka-producer-{self.topic}"
            )

    async def ping(self) -> None:
        """A metadata request for the topic (answered by any live broker), then a ``PING`` to
        the dedupe index's Redis: appends need both."""
        admin = self._require(self._admin)
        thread = self._require(self._admin_thread)

        def topic_metadata() -> None:
            try:
                admin.list_topics(topic=self.topic, timeout=_PING_TIMEOUT_S)
            except KafkaException as exc:
                raise unavailable("answer a metadata request", exc) from exc

        await thread.run(topic_metadata)
        await self._dedupe.ping()

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
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            pump, self._pump = self._pump, None
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            left = await asyncio.to_thread(producer.flush, self.config.delivery_timeout_ms / 1000.0)
            if left:
                logger.error("Kafka event log closed with %d appends undelivered", left)
        if self._admin_thread is not None:
            self._admin_thread.shutdown()
        self._admin = self._admin_thread = None
        await self._dedupe.close()

    @staticmethod
    def _require(client: T | None) -> T:
        if client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return client

    # -- append ------------------------------------------------------------------------------

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
        known = await self._dedupe.known(list(first_of))
        offsets: list[str | None] = [None] * len(records)
        duplicate = [False] * len(records)
        for key, offset in known.items():
            offsets[first_of[key]] = offset
            duplicate[first_of[key]] = True
        repeated = {index for index, _ in repeats}

        todo = [
            index for index in range(len(records)) if not duplicate[index] and index not in repeated
        ]
        deliveries = _Deliveries(asyncio.get_running_loop(), len(todo))
        topic, produce, report = self.topic, producer.produce, deliveries.report
        produced = 0
        refused: BackendUnavailable | None = None
        try:
            for slot, index in enumerate(todo):
                record = records[index]
                produce(
                    topic,
                    value=record.payload,
                    key=record.key.encode(),
                    on_delivery=functools.partial(report, slot),
                )
                produced += 1
        except BufferError as exc:
            refused = BackendUnavailable(
                "the Kafka producer queue is full; retry shortly", code="log_overloaded"
            )
            refused.__cause__ = exc
        except KafkaException as exc:
            refused = unavailable("append", exc)
            refused.__cause__ = exc
        deliveries.expect(produced)
        self._in_flight += 1
        try:
            self._ensure_pump(producer)
            await deliveries.future
        finally:
            self._in_flight -= 1

        marks: dict[str, str] = {}
        for slot, index in enumerate(todo[:produced]):
            offset = deliveries.offsets[slot]
            if not offset:
                continue
            offsets[index] = offset
            dedupe_key = records[index].dedupe_key
            if dedupe_key is not None:
                marks[dedupe_key] = offset
        await self._dedupe.mark(marks)
        # what was produced before a refusal is in the log and marked; the caller retries the
        # rest (and, deduplicated, the rest only)
        if refused is not None:
            raise refused
        if deliveries.error is not None:
            raise unavailable("append", deliveries.error)
        for index, first in repeats:
            offsets[index] = offsets[first]
            duplicate[index] = True
        return [
            AppendResult(str(offset), is_duplicate)
            for offset, is_duplicate in zip(offsets, duplicate, strict=True)
        ]

    # -- read side ---------------------------------------------------------------------------

    async def _member(self, group: str, consumer: str) -> Member:
        async with self._members_lock:
            member = self._members.get((group, consumer))
            if member is None:
                self._require(self._producer)
                member = Member(self.topic, group, consumer, self._consumer_config())
                try:
                    await member.thread.run(member.subscribe)
                except KafkaException as exc:
                    member.thread.shutdown()
                    raise unavailable("join its consumer group", exc) from exc
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
            raise unavailable("read", exc) from exc

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
            raise unavailable("commit", exc) from exc

    # -- offsets, lag, truncate, tail ----------------------------------------------------------

    async def lag(self, group: str) -> int:
        """Sum over partitions of high watermark minus the group's committed offset."""
        return await self._require(self._probe).lag(group)

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Delete the records every known group has committed and that are older than
        ``retention_s``; returns how many went.

        Returns 0 without asking when ``eventlog_kafka_delete_records`` is off (brokers
        without DeleteRecords, like tansu's memory engine): the topic's own retention
        settings bound it then.
        """
        return await self._require(self._probe).truncate(retention_s=retention_s, now=now)

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries across partitions by append time, oldest first."""
        return await self._require(self._probe).tail(limit)

    async def erase(
        self, match: Callable[[LogEntry], bool], *, dry_run: bool = False
    ) -> EraseReport:
        """Kafka deletes no single record: report every matching one and how long the topic
        keeps it (its ``retention.ms`` as the broker describes it).

        ``DeleteRecords`` only cuts a partition's head, so it would take every other
        user's records below the match with it; ``truncate`` (with
        ``eventlog_kafka_delete_records``) removes them with the rest once every group has
        committed them and they are older than the retention.
        """
        probe = self._require(self._probe)
        found = tuple(await probe.matching(match))
        if not found:
            return EraseReport(0)
        config = await probe.topic_config()
        retention_s: float | None = None
        if config is not None:
            retention_ms = int(config.get("retention.ms", "-1"))
            policy = config.get("cleanup.policy", "delete")
            retention_s = (
                retention_ms / 1000.0 if retention_ms >= 0 and "delete" in policy else None
            )
            described = f"retention.ms={retention_ms}, cleanup.policy={policy}"
        else:
            described = "the broker did not describe the topic's retention.ms"
        return EraseReport(
            0,
            found,
            retention_s,
            f"a Kafka topic cannot delete single records; they stay until the topic's "
            f"retention removes their segment ({described})",
        )
