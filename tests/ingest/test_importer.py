"""``personify import FILE``: JSON lines, CSV and Parquet through the collector's validation."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from personify.eventlog.base import LogEntry
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.hashing import HASH_PREFIX, PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.collector import Collector, IngestOutcome
from personify.ingest.importer import arrival, nest
from personify.ingest.sources import SourceRepository
from personify.lake.sink import LakeSink
from personify.lake.table import Lake
from personify.quality.results import QualityRepository
from personify.store.database import open_database
from personify.store.failed_events import FailedEventRepository
from tests.conftest import make_settings
from tests.lake.conftest import PII_KEY, cli_env


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data folder for the command."""
    folder = tmp_path / "data"
    folder.mkdir()
    yield folder


def _import(data: Path, *args: str) -> Result:
    return CliRunner().invoke(main_command(), ["import", *args], env=cli_env(data))


def main_command() -> Any:
    from personify.cli.main import main

    return main


def _logged(data: Path) -> list[dict[str, Any]]:
    async def read() -> list[LogEntry]:
        log = SQLiteEventLog(data / "events.db", durability="off")
        await log.start()
        try:
            return await log.read("test", "test", max_count=10_000, timeout_ms=0)
        finally:
            await log.close()

    return [msgspec.json.decode(e.payload) for e in asyncio.run(read())]


ROWS: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "ada",
        "traits": {"email": "Ada@Example.com", "plan": "pro"},
        "timestamp": "2023-05-01T10:00:00Z",
        "messageId": "h1",
    },
    {
        "type": "track",
        "userId": "ada",
        "event": "Order Completed",
        "properties": {"revenue": 42.5, "products": [{"product_id": "p1", "category": "shoes"}]},
        "timestamp": "2023-05-02T10:00:00Z",
        "messageId": "h2",
    },
    {"type": "track", "userId": "bob", "timestamp": "2023-05-03T10:00:00Z", "messageId": "h3"},
    {"type": "page", "anonymousId": "anon-1", "name": "Home", "messageId": "h4"},
    {"type": "shout", "userId": "carl", "messageId": "h5"},
]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(msgspec.json.encode(row) + b"\n")
    return path


def test_jsonl_import_accepts_valid_rows_and_files_rejects_with_reasons(
    data: Path, tmp_path: Path
) -> None:
    file = _write_jsonl(tmp_path / "history.jsonl", ROWS)
    with file.open("ab") as handle:
        handle.write(b"\n{broken json\n")
    result = _import(data, str(file))
    assert result.exit_code == 0, result.output
    assert "6 rows: 3 accepted, 0 duplicates, 3 rejected" in result.output
    assert "created source import" in result.output

    logged = _logged(data)
    assert [e["messageId"] for e in logged] == ["h1", "h2", "h4"]
    assert logged[0]["traits"]["email"].startswith(HASH_PREFIX)
    # history keeps its own time, and counts as received then (point-in-time features)
    assert logged[0]["timestamp"] == "2023-05-01T10:00:00.000Z"
    assert logged[0]["receivedAt"] == "2023-05-01T10:00:00.000Z"
    assert logged[2]["receivedAt"] > "2026"  # no time of its own: received now

    rejected = [
        msgspec.json.decode(line)
        for line in (tmp_path / "history.jsonl.rejected.jsonl").read_bytes().splitlines()
    ]
    assert [(r["row"], r["code"]) for r in rejected] == [
        (3, "missing_event_name"),
        (5, "invalid_type"),
        (6, "invalid_json"),
    ]
    assert all(r["reason"] for r in rejected)


def test_importing_again_finds_duplicates(data: Path, tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path / "again.jsonl", ROWS[:2])
    assert "2 accepted" in _import(data, str(file)).output
    second = _import(data, str(file), "--source", "import")
    assert "0 accepted, 2 duplicates, 0 rejected" in second.output
    assert len(_logged(data)) == 2


def test_an_event_sent_over_http_is_a_duplicate_when_imported(data: Path, tmp_path: Path) -> None:
    settings = make_settings(data, pii_hash_key=PII_KEY)
    db = open_database(settings)
    source, _ = SourceRepository(db).create("web")
    hasher = PiiHasher(PII_KEY.encode(), settings.pii_paths)

    async def send() -> IngestOutcome:
        log = SQLiteEventLog(data / "events.db", durability="off")
        await log.start()
        try:
            collector = Collector(log, Normalizer(hasher), hasher, FailedEventRepository(db))
            return await collector.collect(source, [ROWS[1]])
        finally:
            await log.close()

    outcome = asyncio.run(send())
    db.dispose()
    assert outcome.accepted == 1

    result = _import(data, str(_write_jsonl(tmp_path / "one.jsonl", ROWS[1:2])), "--source", "web")
    assert "0 accepted, 1 duplicates" in result.output


def test_csv_import_nests_dotted_columns_and_types_property_cells(
    data: Path, tmp_path: Path
) -> None:
    file = tmp_path / "orders.csv"
    with file.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "type",
                "userId",
                "event",
                "timestamp",
                "messageId",
                "properties.revenue",
                "properties.zip",
                "properties.gift",
                "traits.email",
                "context",
            ]
        )
        writer.writerow(
            [
                "track",
                "ada",
                "Order Completed",
                "2023-01-01T00:00:00Z",
                "c1",
                "19.90",
                "01234",
                "true",
                "",
                '{"ip": "1.2.3.4"}',
            ]
        )
        writer.writerow(
            ["identify", "bob", "", "2023-01-02T00:00:00Z", "c2", "", "", "", "b@x.io", ""]
        )
        writer.writerow(["track", "", "Viewed", "2023-01-03T00:00:00Z", "c3", "", "", "", "", ""])
    result = _import(data, str(file))
    assert result.exit_code == 0, result.output
    assert "3 rows: 2 accepted, 0 duplicates, 1 rejected" in result.output
    first, second = _logged(data)
    assert first["properties"] == {"revenue": 19.9, "zip": "01234", "gift": True}
    assert first["context"] == {"ip": "1.2.3.4"}
    assert second["traits"]["email"].startswith(HASH_PREFIX)
    [rejected] = [
        msgspec.json.decode(line)
        for line in (tmp_path / "orders.csv.rejected.jsonl").read_bytes().splitlines()
    ]
    assert rejected["row"] == 3 and rejected["code"] == "missing_identity"


def test_parquet_import_reads_structs_and_timestamps(data: Path, tmp_path: Path) -> None:
    table = pa.table(
        {
            "type": ["track", "track"],
            "userId": ["ada", None],
            "event": ["Product Viewed", "Product Viewed"],
            "timestamp": pa.array(
                [1_700_000_000_000_000, 1_700_000_060_000_000], pa.timestamp("us", "UTC")
            ),
            "messageId": ["p1", "p2"],
            "properties": [{"sku": "s1", "price": 9.5}, {"sku": "s2", "price": 1.0}],
        }
    )
    pq.write_table(table, tmp_path / "views.parquet")
    result = _import(
        data, str(tmp_path / "views.parquet"), "--rejected", str(tmp_path / "bad.jsonl")
    )
    assert result.exit_code == 0, result.output
    assert "2 rows: 1 accepted, 0 duplicates, 1 rejected" in result.output
    [event] = _logged(data)
    assert event["properties"] == {"sku": "s1", "price": 9.5}
    assert event["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert (tmp_path / "bad.jsonl").exists()


def test_imported_events_reach_the_lake_and_quality_is_recorded(data: Path, tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path / "h.jsonl", ROWS[:4])
    assert _import(data, str(file)).exit_code == 0
    settings = make_settings(data)

    async def sink_once() -> None:
        log = SQLiteEventLog(data / "events.db", durability="off")
        await log.start()
        try:
            await LakeSink(log, Lake.from_settings(settings), linger_ms=0).process_once()
        finally:
            await log.close()

    asyncio.run(sink_once())
    assert Lake.from_settings(settings).open().count() == 3
    db = open_database(settings)
    [run] = QualityRepository(db).latest("ingest")
    db.dispose()
    assert run.row_count == 3 and run.status == "warned"  # 1 of 4 rows rejected: over 5 %


def test_an_unknown_suffix_needs_format(data: Path, tmp_path: Path) -> None:
    file = tmp_path / "events.txt"
    file.write_text("{}\n")
    result = _import(data, str(file))
    assert result.exit_code == 1
    assert "--format" in result.output


def test_nest_builds_objects_from_dotted_paths() -> None:
    assert nest(
        {"properties.a.b": "1", "properties.c": "x", "userId": "007", "empty": ""}, typed=True
    ) == {"properties": {"a": {"b": 1}, "c": "x"}, "userId": "007"}


def test_arrival_prefers_received_then_sent_then_event_time() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    assert arrival(
        {"receivedAt": "2024-01-02T00:00:00Z", "timestamp": "2023-01-01T00:00:00Z"}, now
    ) == datetime(2024, 1, 2, tzinfo=UTC)
    assert arrival(
        {"sentAt": "2024-01-03T00:00:00Z", "timestamp": "2024-01-01T00:00:00Z"}, now
    ) == datetime(2024, 1, 3, tzinfo=UTC)
    assert arrival({"timestamp": "2024-01-04T00:00:00Z"}, now) == datetime(2024, 1, 4, tzinfo=UTC)
    assert arrival({"timestamp": "2030-01-01T00:00:00Z"}, now) == now
    assert arrival({"timestamp": "soon"}, now) == now
    assert arrival(["not", "an", "object"], now) == now
