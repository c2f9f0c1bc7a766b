"""The event log on a Kafka topic, read by Kafka consumer groups (confluent-kafka).

Modules: ``log`` (this adapter), ``dedupe`` (the Redis dedupe index), ``probes`` (offsets,
lag, truncation, tail), ``members`` (consumer-group members), ``client`` (the driver).

URL: ``kafka://host:9092/topic?partitions=N`` (several brokers: ``kafka://h1:9092,h2:9092/t``).
``start`` creates the topic when it is missing, with N partitions (else
``eventlog_kafka_partitions``). ``LogEntry.partition``/``offset`` are Kafka's; an
``AppendResult.offset`` reads ``"<partition>:<offset>"``. ``appended_at`` is the record
timestamp (the producer's clock, or the broker's with ``LogAppendTime`` topics).

* **Append.** An idempotent producer (``enable.idempotence``, ``acks=all``) keyed by
  ``LogRecord.key`` with the Java-compatible murmur2 partitioner, so one user's events land
  in one partition, in order, without duplicates from producer retries. ``produce`` never
  blocks; while appends wait, a task on the event loop serves the delivery reports with
  ``poll(0)`` every millisecond, and each ``append`` awaits one future for its whole batch.
* **Dedupe.** Kafka cannot check and append in one step, so the dedupe index lives in Redis
  (``eventlog_dedupe_url``, required; ``dedupe.RedisDedupeIndex``).
* **Read/commit.** One consumer per (group, consumer) with ``enable.auto.commit=false``;
  ``commit`` commits synchronously, per partition, the offset after the highest entry, and
  never moves a partition's committed offset backwards. On a rebalance librdkafka drops the
  revoked partitions' positions and fetch queues; the new owner starts at the committed
  offsets, so uncommitted entries are delivered again (the worker is idempotent). A commit
  for a partition this consumer no longer owns is dropped for the same reason.
* **Delivery count.** Kafka keeps no per-record delivery counter: ``delivery_count`` is
  always 1, and poison entries must be caught by the worker's own retry limit.
* **Lag** = sum over partitions of high watermark - committed offset (``probes``).
* **Truncate** deletes (``DeleteRecords``) below the lowest committed offset of every group
  that commits to or is assigned this topic. Set ``eventlog_kafka_delete_records=false`` for
  brokers without DeleteRecords (tansu's in-memory engine closes the connection on it):
  ``truncate`` then returns 0 and retention settings bound the topic instead. A broker that
  answers "unsupported" gets the same treatment.
"""

from __future__ import annotations

from personify.eventlog.kafka.log import KafkaEventLog

__all__ = ["KafkaEventLog"]
