"""What the Kafka log adds to the contract: key partitioning, group splits, failover (on tansu)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import LogEntry, LogRecord
from personify.eventlog.kafka import KafkaEventLog
from tests.conftest import make_settings, service_missing
from tests.contracts.conftest import REDIS_URL, drop_redis_keys
from tests.kafka_broker import TansuBroker, kafka_broker

__all__ = ["kafka_broker"]

OpenLog = Callable[..., Awaitable[KafkaEventLog]]
ROOT = Path(__file__).resolve().parents[2]

# fast group joins and reads on a loopback tansu; DeleteRecords is not implemented there
FAST_KAFKA: dict[str, Any] = {
    "eventlog_dedupe_url": REDIS_URL,
    "eventlog_kafka_session_timeout_ms": 2000,
    "eventlog_kafka_fetch_wait_ms": 20,
    "eventlog_kafka_linger_ms": 1.0,
    "eventlog_kafka_delete_records": False,
}


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client picks for ``key`` (Murmur2, seed 0x9747b28c, toPositive)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(key)) & mask
    whole = len(key) - len(key) % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = key[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


@pytest.fixture
async def topic(kafka_broker: TansuBroker) -> AsyncIterator[str]:
    """A fresh topic name; its dedupe keys are deleted afterwards."""
    name = f"personify-test-{uuid.uuid4().hex[:12]}"
    yield name
    await drop_redis_keys(REDIS_URL, f"personify:kafka:{name}:*")


@pytest.fixture
def group() -> str:
    """A fresh consumer group: on tansu, a group whose members have all left may never
    rebalance again (its JoinGroup answers name a departed leader), so groups are not reused."""
    return f"group-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_log(tmp_path: Path, kafka_broker: TansuBroker, topic: str) -> AsyncIterator[OpenLog]:
    """Opens started logs on the test's topic; closes them after."""
    opened: list[KafkaEventLog] = []

    async def open_log(*, partitions: int = 4) -> KafkaEventLog:
        settings = make_settings(tmp_path / "data", **FAST_KAFKA)
        log = KafkaEventLog.from_url(kafka_broker.url(topic, partitions=partitions), settings)
        try:
            await log.start()
        except BackendUnavailable as exc:
            service_missing(f"Kafka or the Redis dedupe index is unavailable: {exc}")
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        await log.close()


async def read_all(
    log: KafkaEventLog, group: str, consumer: str, expected: int, *, timeout_s: float = 20.0
) -> list[LogEntry]:
    got: list[LogEntry] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(await log.read(group, consumer, max_count=500, timeout_ms=200))
    return got


async def wait_until_split(
    log: KafkaEventLog, group: str, consumers: list[str], partitions: int
) -> tuple[dict[str, frozenset[int]], dict[str, list[LogEntry]]]:
    """Keep the consumers polling until their assignments split every partition between them.

    Returns the split and what each consumer read meanwhile.
    """
    reads: dict[str, list[LogEntry]] = {c: [] for c in consumers}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = await asyncio.gather(
            *(log.read(group, c, max_count=500, timeout_ms=100) for c in consumers)
        )
        for consumer, batch in zip(consumers, polled, strict=True):
            reads[consumer].extend(batch)
        owners = {c: log.owned_partitions(group, c) for c in consumers}
        if all(owners.values()) and sum(map(len, owners.values())) == partitions:
            assert frozenset().union(*owners.values()) == frozenset(range(partitions))
            return owners, reads
    raise AssertionError(f"group {group} did not split its partitions among {consumers}")


async def test_kafka_url_needs_a_dedupe_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ConfigurationError, match="PERSONIFY_EVENTLOG_DEDUPE_URL"):
        KafkaEventLog.from_url("kafka://127.0.0.1:9092/events", settings)
    log = KafkaEventLog.from_url(
        "kafka://k1,k2:9093/clicks?partitions=6",
        make_settings(tmp_path, eventlog_dedupe_url=REDIS_URL),
    )
    assert (log.bootstrap_servers, log.topic, log.partitions) == ("k1:9092,k2:9093", "clicks", 6)


async def test_one_key_stays_in_one_partition_in_order(open_log: OpenLog, group: str) -> None:
    log = await open_log(partitions=4)
    keys = [f"user-{n}" for n in range(24)]
    appended: list[tuple[str, str]] = []
    for round_ in range(5):
        batch = [LogRecord(f"{key}:{round_}".encode(), key, f"{key}:{round_}") for key in keys]
        results = await log.append(batch)
        appended.extend((r.offset, b.key) for r, b in zip(results, batch, strict=True))

    got = await read_all(log, group, "c", 120)
    assert len(got) == 120
    partitions_of: dict[str, set[int]] = {}
    for entry in got:
        partitions_of.setdefault(entry.key, set()).add(entry.partition)
        mine = [e.payload for e in got if e.key == entry.key]
        assert mine == [f"{entry.key}:{r}".encode() for r in range(5)]
    assert all(len(p) == 1 for p in partitions_of.values())
    # the Java client's partitioner, so other producers put a user in the same partition
    assert {k: p.pop() for k, p in partitions_of.items()} == {
        key: murmur2_partition(key.encode(), 4) for key in keys
    }
    assert len({murmur2_partition(key.encode(), 4) for key in keys}) > 1
    # an append's offset names the partition and offset the entry is read back at
    assert sorted(offset for offset, _ in appended) == sorted(
        f"{e.partition}:{e.offset}" for e in got
    )


async def test_two_consumers_split_the_partitions_and_see_everything_once(
    open_log: OpenLog, group: str
) -> None:
    log = await open_log(partitions=4)
    owners, reads = await wait_until_split(log, group, ["a", "b"], 4)
    assert reads == {"a": [], "b": []}

    await log.append([LogRecord(f"e-{i}".encode(), f"user-{i % 40}", f"e-{i}") for i in range(400)])
    seen: dict[str, list[LogEntry]] = {"a": [], "b": []}
    deadline = time.monotonic() + 20
    while sum(map(len, seen.values())) < 400 and time.monotonic() < deadline:
        batches = await asyncio.gather(*(log.read(group, c, timeout_ms=200) for c in seen))
        for consumer, batch in zip(seen, batches, strict=True):
            seen[consumer].extend(batch)
            await log.commit(group, consumer, batch)

    everything = seen["a"] + seen["b"]
    assert len(everything) == 400
    assert len({(e.partition, e.offset) for e in everything}) == 400
    for consumer, entries in seen.items():
        assert entries, f"{consumer} got nothing"
        assert {e.partition for e in entries} <= owners[consumer]
    assert await log.lag(group) == 0


async def test_a_rebalance_hands_uncommitted_entries_to_the_new_owner(
    open_log: OpenLog, group: str
) -> None:
    log = await open_log(partitions=4)
    await log.append([LogRecord(f"r-{i}".encode(), f"user-{i % 40}", f"r-{i}") for i in range(200)])
    first = await read_all(log, group, "a", 200)  # "a" is alone: it owns every partition
    assert len(first) == 200

    owners, reads = await wait_until_split(log, group, ["a", "b"], 4)
    # "a" lost partitions before committing: its commit keeps only those it still owns
    await log.commit(group, "a", first + reads["a"])
    expected = sorted((e.partition, int(e.offset)) for e in first if e.partition in owners["b"])
    assert expected
    # "b" starts its partitions at the committed offsets: everything "a" read there comes again
    got = reads["b"] + await read_all(log, group, "b", len(expected) - len(reads["b"]))
    assert sorted((e.partition, int(e.offset)) for e in got) == expected
    await log.commit(group, "b", got)
    assert await log.lag(group) == 0


_DOOMED = """
import asyncio, json, sys
from pathlib import Path
from personify.eventlog.kafka import KafkaEventLog
from tests.conftest import make_settings

async def main() -> None:
    url, group, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data_dir, overrides = sys.argv[4], sys.argv[5]
    log = KafkaEventLog.from_url(url, make_settings(Path(data_dir), **json.loads(overrides)))
    await log.start()
    got = []
    while len(got) < expected:
        got.extend(await log.read(group, "doomed", timeout_ms=200))
    half = got[: expected // 2]
    await log.commit(group, "doomed", half)
    committed = {}
    for entry in half:
        committed[entry.partition] = max(committed.get(entry.partition, 0), int(entry.offset) + 1)
    read = [[e.partition, int(e.offset)] for e in got]
    print(json.dumps({"read": read, "committed": committed}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_consumer_killed_before_committing_has_its_entries_redelivered(
    open_log: OpenLog, kafka_broker: TansuBroker, group: str, tmp_path: Path
) -> None:
    log = await open_log(partitions=3)
    await log.append([LogRecord(f"k-{i}".encode(), f"user-{i % 9}", f"k-{i}") for i in range(90)])
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED,
        kafka_broker.url(log.topic),
        group,
        "90",
        str(tmp_path / "child"),
        json.dumps(FAST_KAFKA),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)  # no LeaveGroup, no commit: the broker must notice
        _, stderr = await child.communicate()
    assert line, stderr.decode()[-2000:]
    report = json.loads(line)
    assert len(report["read"]) == 90
    committed = {int(p): o for p, o in report["committed"].items()}
    uncommitted = sorted((p, o) for p, o in map(tuple, report["read"]) if o >= committed.get(p, 0))
    assert 0 < len(uncommitted) < 90

    survivor = await read_all(log, group, "survivor", len(uncommitted), timeout_s=30)
    assert sorted((e.partition, int(e.offset)) for e in survivor) == uncommitted
    await log.commit(group, "survivor", survivor)
    assert await log.lag(group) == 0


async def test_a_burst_of_concurrent_appends_waits_for_dedupe_connections(
    open_log: OpenLog, group: str
) -> None:
    log = await open_log(partitions=2)
    results = await asyncio.gather(
        *(log.append([LogRecord(f"b-{i}".encode(), f"user-{i}", f"b-{i}")]) for i in range(500))
    )
    assert len({r[0].offset for r in results}) == 500
    assert not any(r[0].duplicate for r in results)
    assert await log.lag(group) == 500


async def test_dedupe_keys_of_any_text_are_found_at_their_own_position(
    open_log: OpenLog, group: str
) -> None:
    # the dedupe scripts take the keys run together with their byte lengths: spaces, line
    # breaks, digits and multi-byte characters must not shift one key onto another
    log = await open_log(partitions=2)
    keys = ["a b", "12", "1", "line\nbreak", "émoji 🎉", "", "x" * 300, "a"]
    first = await log.append([LogRecord(k.encode(), "user-1", k) for k in keys[::2]])
    mixed = await log.append([LogRecord(k.encode(), "user-1", k) for k in keys])
    assert [r.duplicate for r in mixed] == [i % 2 == 0 for i in range(len(keys))]
    assert [r.offset for r in mixed[::2]] == [r.offset for r in first]
    again = await log.append([LogRecord(k.encode(), "user-1", k) for k in reversed(keys)])
    assert all(r.duplicate for r in again)
    assert [r.offset for r in again] == [r.offset for r in reversed(mixed)]
    assert await log.lag(group) == len(keys)


async def test_a_refused_record_is_not_acknowledged_nor_marked(
    open_log: OpenLog, group: str
) -> None:
    log = await open_log(partitions=2)
    # larger than the producer's message.max.bytes: produce() refuses it on the spot
    too_big = b"x" * 2_000_000
    batch = [
        LogRecord(b"small-0", "user-1", "small-0"),
        LogRecord(too_big, "user-1", "big"),
        LogRecord(b"small-1", "user-1", "small-1"),
    ]
    with pytest.raises(BackendUnavailable):
        await log.append(batch)
    # what was produced before the refusal is in the log and deduplicated; the rest is not
    # taken for a duplicate when the client sends it again
    retry = await log.append([batch[0], LogRecord(b"big, smaller", "user-1", "big"), batch[2]])
    assert [r.duplicate for r in retry] == [True, False, False]
    assert await log.lag(group) == 3
