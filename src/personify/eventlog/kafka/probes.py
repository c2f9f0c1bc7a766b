"""The Kafka log's probes: watermarks, committed offsets, lag, truncation and tail.

A probe consumer that never joins a group reads each partition's end: the high watermark is
taken from a fetch response, not from ListOffsets, because tansu answers ListOffsets(latest)
with the last batch's base offset + 1, which undercounts after batched appends. Committed
offsets, group listings and record deletion go through the admin client.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from personify.errors import BackendUnavailable
from personify.eventlog.base import LogEntry
from personify.eventlog.kafka.client import (
    ADMIN_TIMEOUT_S,
    OFFSET_INVALID,
    UNSUPPORTED,
    AdminClient,
    ClientThread,
    ConfigResource,
    ConsumerGroupTopicPartitions,
    KafkaConsumer,
    KafkaError,
    KafkaException,
    Message,
    ResourceType,
    TopicPartition,
    entry_of,
    error_code,
    unavailable,
)

logger = logging.getLogger("personify.eventlog")

T = TypeVar("T")

PROBE_TIMEOUT_S = 10.0


class TopicProbe:
    """Reads one topic's offsets and groups; deletes what every group has committed."""

    def __init__(
        self,
        topic: str,
        partitions: int,
        admin: AdminClient,
        admin_thread: ClientThread,
        consumer_config: dict[str, Any],
        *,
        delete_records: bool,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self._admin = admin
        self._admin_thread = admin_thread
        self._consumer_config = consumer_config
        self._delete_records = delete_records
        self._probe: KafkaConsumer | None = None
        self._probe_thread: ClientThread | None = None

    async def close(self) -> None:
        """Close the probe consumer and its thread."""
        if self._probe is not None and self._probe_thread is not None:
            with contextlib.suppress(KafkaException):
                await self._probe_thread.run(self._probe.close)
        if self._probe_thread is not None:
            self._probe_thread.shutdown()
        self._probe = self._probe_thread = None

    async def _in_probe(self, fn: Callable[[KafkaConsumer], T]) -> T:
        if self._probe_thread is None:
            self._probe_thread = ClientThread(f"kafka-probe-{self.topic}")
        if self._probe is None:
            # never joins or commits: a group id is required by the client, nothing more
            self._probe = KafkaConsumer(
                {
                    **self._consumer_config,
                    "group.id": f"personify-probe-{uuid.uuid4().hex}",
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                }
            )
        try:
            return await self._probe_thread.run(fn, self._probe)
        except KafkaException as exc:
            raise unavailable("read offsets", exc) from exc

    def _partition_ids(self, probe: KafkaConsumer) -> list[int]:
        topic = probe.list_topics(self.topic, timeout=ADMIN_TIMEOUT_S).topics.get(self.topic)
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
        deadline = time.monotonic() + PROBE_TIMEOUT_S
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
                TopicPartition(self.topic, p), timeout=ADMIN_TIMEOUT_S, cached=False
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
        admin = self._admin
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(self.topic, p) for p in partitions]
        )
        futures = admin.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_S)
        committed: dict[int, int] = {}
        for future in futures.values():
            for tp in future.result(timeout=ADMIN_TIMEOUT_S).topic_partitions or []:
                if tp.topic == self.topic and tp.error is None and tp.offset != OFFSET_INVALID:
                    committed[tp.partition] = int(tp.offset)
        return committed

    async def lag(self, group: str) -> int:
        """Sum over partitions of high watermark minus the group's committed offset."""
        ends = await self._in_probe(self._ends)
        try:
            committed = await self._admin_thread.run(self._group_offsets, group, list(ends))
        except KafkaException as exc:
            raise unavailable("read committed offsets", exc) from exc
        return sum(max(0, high - committed.get(p, low)) for p, (low, high) in ends.items())

    def _readers(self) -> list[str]:
        """Groups that commit to this topic or are assigned its partitions."""
        admin = self._admin
        listing = admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(
            timeout=ADMIN_TIMEOUT_S
        )
        names = [g.group_id for g in listing.valid]
        if not names:
            return []
        readers: list[str] = []
        described = admin.describe_consumer_groups(names, request_timeout=ADMIN_TIMEOUT_S)
        for name, future in described.items():
            description = future.result(timeout=ADMIN_TIMEOUT_S)
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

    def _aged_ends(
        self, probe: KafkaConsumer, ends: dict[int, tuple[int, int]], cutoff_ms: int
    ) -> dict[int, int]:
        """Per partition, the first offset appended at or after ``cutoff_ms`` (the high
        watermark when every record is older): nothing from there on is old enough to go."""
        asked = [TopicPartition(self.topic, p, cutoff_ms) for p in ends]
        aged = {p: high for p, (_low, high) in ends.items()}
        for tp in probe.offsets_for_times(asked, timeout=ADMIN_TIMEOUT_S):
            # -1: no record at or after the cutoff
            if tp.error is None and tp.offset >= 0:
                aged[tp.partition] = min(aged[tp.partition], int(tp.offset))
        return aged

    def _delete_below(self, ends: dict[int, tuple[int, int]], aged: dict[int, int]) -> int:
        readers = self._readers()
        if not readers:
            return 0
        floor = dict(aged)
        for group in readers:
            committed = self._group_offsets(group, list(ends))
            for p, (low, _high) in ends.items():
                floor[p] = min(floor[p], committed.get(p, low))
        targets = [TopicPartition(self.topic, p, o) for p, o in floor.items() if o > ends[p][0]]
        if not targets:
            return 0
        admin = self._admin
        removed = 0
        for tp, future in admin.delete_records(targets, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                result = future.result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                if error_code(exc) in UNSUPPORTED:
                    logger.warning("the Kafka broker cannot delete records: %s", exc)
                    continue
                raise
            removed += max(0, int(result.low_watermark) - ends[tp.partition][0])
        return removed

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Delete the records every known group has committed and that were appended more
        than ``retention_s`` before ``now``; returns how many went.

        Returns 0 without asking when ``eventlog_kafka_delete_records`` is off (brokers
        without DeleteRecords, like tansu's memory engine).
        """
        if not self._delete_records:
            return 0
        ends = await self._in_probe(self._ends)
        cutoff_ms = max(0, int(((time.time() if now is None else now) - retention_s) * 1000))
        aged = await self._in_probe(
            functools.partial(self._aged_ends, ends=ends, cutoff_ms=cutoff_ms)
        )
        try:
            return await self._admin_thread.run(self._delete_below, ends, aged)
        except KafkaException as exc:
            raise unavailable("delete records", exc) from exc

    def _newest(self, probe: KafkaConsumer, limit: int) -> list[LogEntry]:
        ends = self._ends(probe)
        start = {p: max(low, high - limit) for p, (low, high) in ends.items() if high > low}
        entries = [entry_of(m) for m in self._drain_probe(probe, start)]
        entries.sort(key=lambda e: (e.appended_at, e.partition, int(e.offset)))
        return entries[-limit:]

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries across partitions by append time, oldest first."""
        if limit <= 0:
            return []
        return await self._in_probe(functools.partial(self._newest, limit=limit))

    def _matching(self, probe: KafkaConsumer, match: Callable[[LogEntry], bool]) -> list[str]:
        ends = self._ends(probe)
        start = {p: low for p, (low, high) in ends.items() if high > low}
        found: list[str] = []
        for message in self._drain_probe(probe, start):
            entry = entry_of(message)
            if match(entry):
                found.append(f"{entry.partition}:{entry.offset}")
        return found

    async def matching(self, match: Callable[[LogEntry], bool]) -> list[str]:
        """Every retained record ``match`` is true for, as ``"<partition>:<offset>"``."""
        return await self._in_probe(functools.partial(self._matching, match=match))

    def _topic_config(self) -> dict[str, str]:
        resource = ConfigResource(ResourceType.TOPIC, self.topic)
        futures = self._admin.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
        config: dict[str, str] = {}
        for future in futures.values():
            for name, entry in future.result(timeout=ADMIN_TIMEOUT_S).items():
                if entry.value is not None:
                    config[name] = str(entry.value)
        return config

    async def topic_config(self) -> dict[str, str] | None:
        """The topic's configuration as the broker describes it; None when it does not."""
        try:
            return await self._admin_thread.run(self._topic_config)
        except KafkaException as exc:
            logger.warning("the Kafka broker did not describe topic %s: %s", self.topic, exc)
            return None
