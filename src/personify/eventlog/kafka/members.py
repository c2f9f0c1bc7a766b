"""A consumer in a Kafka consumer group: its own librdkafka consumer and thread."""

from __future__ import annotations

import logging
from typing import Any

from personify.eventlog.base import LogEntry
from personify.eventlog.kafka.client import (
    ADMIN_TIMEOUT_S,
    OWNERSHIP_LOST,
    ClientThread,
    KafkaConsumer,
    KafkaError,
    KafkaException,
    TopicPartition,
    entry_of,
    error_code,
    unavailable,
)

logger = logging.getLogger("personify.eventlog")


# how long a read that has its first entry waits for more to fill the batch: short beside
# the worker's own per-batch time, so freshness at low rates barely moves
READ_LINGER_S = 0.02


class Member:
    """One consumer in one group: its own librdkafka consumer and thread."""

    def __init__(self, topic: str, group: str, name: str, config: dict[str, Any]) -> None:
        self.topic = topic
        self.group = group
        self.name = name
        self.thread = ClientThread(f"kafka-{group}-{name}")
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
        """Wait up to ``timeout_s`` for one entry, then gather up to ``max_count`` for at most
        ``READ_LINGER_S`` more."""
        first = self.consumer.poll(timeout_s)
        if first is None:
            return []
        messages = [first]
        if max_count > 1:
            # what is fetched already is only the consumer's share of a fetch: with the
            # partitions split between several workers, taking just that would halve each
            # worker's batch, and a worker's cost per event grows as its batch shrinks
            messages.extend(self.consumer.consume(max_count - 1, READ_LINGER_S))
        entries: list[LogEntry] = []
        errors: list[KafkaError] = []
        for message in messages:
            error = message.error()
            if error is None:
                entries.append(entry_of(message))
            elif error.code() != KafkaError._PARTITION_EOF:
                errors.append(error)
        if errors and not entries:
            raise unavailable("read", errors[0])
        for error in errors:
            logger.warning("Kafka consumer %s/%s: %s", self.group, self.name, error)
        return entries

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit ``partition -> next offset`` for the partitions this member still owns."""
        wanted = {p: o for p, o in offsets.items() if p in self.owned}
        unknown = [TopicPartition(self.topic, p) for p in wanted if p not in self.committed]
        if unknown:
            for tp in self.consumer.committed(unknown, timeout=ADMIN_TIMEOUT_S):
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
            if error_code(exc) in OWNERSHIP_LOST:
                logger.info(
                    "commit of %s/%s dropped after a rebalance: %s", self.group, self.name, exc
                )
                return
            raise
        for tp in done or []:
            if tp.error is None:
                self.committed[tp.partition] = max(self.committed.get(tp.partition, -1), tp.offset)
            elif tp.error.code() not in OWNERSHIP_LOST:
                raise KafkaException(tp.error)

    def close(self) -> None:
        """Leave the group (without committing) and close the consumer."""
        self.consumer.close()
