"""The lake sink: micro-batches, partitions, schema evolution, exactly once, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pyarrow.compute as pc
import pytest

from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.lake.sink import LAKE_GROUP, LakeSink
from personify.lake.table import METADATA_OFFSETS, Lake, offset_version, transaction_app_id
from personify.quality.checks import QualityContext
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityCheckFailed
from personify.settings import Settings
from personify.store.database import open_database
from personify.store.failed_events import FailedEventRepository
from tests.lake.conftest import T0, normalized, records, track


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteEventLog]:
    """A started SQLite event log."""
    opened = SQLiteEventLog(tmp_path / "events.db", durability="off")
    await opened.start()
    yield opened
    await opened.close()


def _sink(log: SQLiteEventLog, lake: Lake, **kw: object) -> LakeSink:
    options: dict[str, object] = {"linger_ms": 0, "max_batch_events": 1000}
    options.update(kw)
    return LakeSink(log, lake, **options)  # type: ignore[arg-type]


async def _drain(sink: LakeSink) -> int:
    written = 0
    while True:
        batch = await sink.process_once()
        if not batch.read:
            return written
        written += batch.written


def _message_ids(lake: Lake) -> list[str]:
    return sorted(lake.open().to_pyarrow_table(columns=["message_id"]).column(0).to_pylist())


async def test_every_event_lands_once_partitioned_by_event_date(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    events = [normalized(track(i, at=T0 - timedelta(hours=7 * i))) for i in range(50)]
    await log.append(records(events))
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake, max_batch_events=20)

    assert await _drain(sink) == 50
    assert _message_ids(lake) == sorted(e["messageId"] for e in events)
    assert lake.version() == 2  # three batches: 20 + 20 + 10
    dates = {e["timestamp"][:10] for e in events}
    partitions = {p["event_date"] for p in lake.open().partitions()}
    assert partitions == dates
    assert all(Path(f).parent.name.startswith("event_date=") for f in lake.open().file_uris())
    assert await log.lag(LAKE_GROUP) == 0
    assert lake.watermarks(LAKE_GROUP, {0}) == {0: 50}
    newest = lake.history(1)[0]
    assert msgspec.json.decode(newest[METADATA_OFFSETS]) == {"0": "50"}


async def test_a_batch_closes_on_its_byte_bound(log: SQLiteEventLog, tmp_path: Path) -> None:
    await log.append(records([normalized(track(i)) for i in range(30)]))
    size = len(records([normalized(track(0))])[0].payload)
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake, max_batch_bytes=size * 10, linger_ms=500)
    sizes = [(await sink.process_once()).read for _ in range(5)]
    assert sum(sizes) == 30
    # payloads differ by a few bytes; a batch never goes over the bound
    assert max(sizes) <= 10 and sizes[0] >= 8


async def test_a_batch_waits_for_more_up_to_linger(log: SQLiteEventLog, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake, linger_ms=400)
    await log.append(records([normalized(track(1))]))

    async def late_append() -> None:
        await asyncio.sleep(0.1)
        await log.append(records([normalized(track(2))]))

    appender = asyncio.create_task(late_append())
    batch = await sink.process_once()
    await appender
    assert batch.read == 2
    assert lake.version() == 0


async def test_new_properties_evolve_the_schema(log: SQLiteEventLog, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake)
    await log.append(records([normalized(track(1, properties={"price": 3}))]))
    await _drain(sink)
    await log.append(
        records(
            [
                normalized(track(2, properties={"price": "free", "colour": "red"})),
                normalized(track(3, properties={"price": 4.5, "size": 42})),
            ]
        )
    )
    await _drain(sink)
    table = lake.open().to_pyarrow_table()
    assert {"prop_price", "prop_colour", "prop_size"} <= set(table.column_names)
    by_id = {r["message_id"]: r for r in table.to_pylist()}
    assert by_id["m1"]["prop_price"] == 3.0
    assert by_id["m2"]["prop_price"] is None and by_id["m2"]["prop_colour"] == "red"
    assert by_id["m3"]["prop_size"] == 42.0 and by_id["m1"]["prop_colour"] is None


async def test_a_crash_between_lake_write_and_log_commit_leaves_no_duplicates(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    events = [normalized(track(i)) for i in range(30)]
    await log.append(records(events))
    lake = Lake(str(tmp_path / "lake"))
    first = _sink(log, lake, consumer="first", max_batch_events=20)
    # what process_once does, minus the log commit: the process dies right after the write
    entries = await log.read(LAKE_GROUP, "first", max_count=20)
    first._write(entries)
    assert await log.lag(LAKE_GROUP) == 30

    second = _sink(log, lake, consumer="second")
    batch = await second.process_once()
    assert batch.read == 30 and batch.skipped == 20 and batch.written == 10
    assert _message_ids(lake) == sorted(e["messageId"] for e in events)
    assert await log.lag(LAKE_GROUP) == 0


async def test_a_resent_event_in_one_batch_is_written_once(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    event = normalized(track(1))
    # appended without a dedupe key: the log's window cannot catch it, the sink does
    payload = msgspec.json.encode(event)
    await log.append([LogRecord(payload, "k"), LogRecord(payload, "k")])
    lake = Lake(str(tmp_path / "lake"))
    batch = await _sink(log, lake).process_once()
    assert (batch.read, batch.written, batch.skipped) == (2, 1, 1)


async def test_an_unreadable_entry_is_dead_lettered_and_the_rest_written(
    log: SQLiteEventLog, tmp_path: Path, settings: Settings
) -> None:
    db = open_database(settings)
    failed = FailedEventRepository(db)
    good = records([normalized(track(1)), normalized(track(2))])
    bad_time = normalized(track(3)) | {"sentAt": "last tuesday"}
    await log.append([good[0], LogRecord(b"{not json", "k"), good[1], records([bad_time])[0]])
    lake = Lake(str(tmp_path / "lake"))
    batch = await _sink(log, lake, failed_events=failed).process_once()
    assert (batch.written, batch.dead_lettered) == (2, 2)
    letters = failed.list(stage="lake")
    assert [x.code for x in letters] == ["invalid_lake_event"] * 2
    assert "not JSON" in letters[0].reason and "sentAt" in letters[1].reason
    assert lake.watermarks(LAKE_GROUP, {0}) == {0: 4}
    db.dispose()


async def test_a_batch_of_only_dead_letters_still_moves_the_offsets(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    await log.append([LogRecord(b"garbage", "k")])
    lake = Lake(str(tmp_path / "lake"))
    batch = await _sink(log, lake).process_once()
    assert (batch.written, batch.dead_lettered) == (0, 1)
    assert lake.watermarks(LAKE_GROUP, {0}) == {0: 1}
    assert lake.open().count() == 0


async def test_a_failing_critical_check_stops_the_sink_and_commits_nothing(
    log: SQLiteEventLog, tmp_path: Path, settings: Settings
) -> None:
    db = open_database(settings)
    quality = QualityRepository(db)
    bad = normalized(track(2))
    bad["type"] = "purchase"  # not a Segment type: the normaliser would never let it through
    await log.append(records([normalized(track(1)), bad]))
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake, quality=QualityContext(now=T0), record_quality=quality.record)
    with pytest.raises(QualityCheckFailed) as failure:
        await sink.run(asyncio.Event())
    assert "type.isin" in failure.value.message
    assert not lake.exists()
    assert await log.lag(LAKE_GROUP) == 2
    [run] = quality.latest("lake_batch")
    assert run.status == "failed"
    db.dispose()


async def test_run_writes_until_stopped_and_flushes_what_it_read(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    sink = _sink(log, lake, linger_ms=50)
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    for chunk in range(5):
        await log.append(records([normalized(track(chunk * 10 + i)) for i in range(10)]))
        await asyncio.sleep(0.02)
    deadline = asyncio.get_running_loop().time() + 10
    while await log.lag(LAKE_GROUP) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, 10)
    assert len(_message_ids(lake)) == 50
    assert sink.events_written == 50


def test_offsets_order_as_integers() -> None:
    assert offset_version("42") == 42
    assert offset_version("1700000000000-3") > offset_version("1700000000000-2")
    assert offset_version("1700000000001-0") > offset_version("1700000000000-999")
    assert transaction_app_id("lake", 3) == "personify-lake/lake/3"


async def test_the_latest_version_reads_every_row(log: SQLiteEventLog, tmp_path: Path) -> None:
    await log.append(records([normalized(track(i)) for i in range(5)]))
    lake = Lake(str(tmp_path / "lake"))
    await _drain(_sink(log, lake))
    dataset = lake.dataset()
    prices = dataset.to_table(columns=["prop_price"]).column(0)
    assert pc.sum(prices).as_py() == pytest.approx(sum(i * 1.5 for i in range(5)))


async def test_two_sinks_racing_on_one_partition_write_each_event_once(
    log: SQLiteEventLog, tmp_path: Path
) -> None:
    await log.append(records([normalized(track(i)) for i in range(300)]))
    lake_a = Lake(str(tmp_path / "lake"))
    lake_b = Lake(str(tmp_path / "lake"))
    await log.append(records([normalized(track(1000))]))  # the table exists before the race
    first = _sink(log, lake_a, consumer="a", max_batch_events=50)
    second = _sink(log, lake_b, consumer="b", max_batch_events=50)
    await first.process_once()
    for _ in range(12):
        await asyncio.gather(first.process_once(), second.process_once())
    ids = _message_ids(lake_a)
    assert len(ids) == len(set(ids)) == 301
    assert first.events_written + second.events_written == 301
