"""Lake write benchmark: the lake sink's events/s against a raw ``deltalake`` write of the same
Arrow tables, measured in the same run.

Run it with ``.venv/bin/python bench/lake.py [--events N] [--batch N] [--rounds R]``. It
prints ONE JSON object on stdout (progress goes to stderr):

* ``sink`` — ``LakeSink`` draining a SQLite event log (durability ``off``) that holds
  ``--events`` normalised events into an empty lake, micro-batches of ``--batch`` events:
  log read, JSON decode, Arrow conversion with promoted properties, the ``lake_batch``
  quality checks, the Delta commit with its transaction ids, and the log commit;
* ``sink_without_checks`` — the same with ``PERSONIFY_LAKE_QUALITY_CHECKS=false``;
* ``baseline`` — ``deltalake.write_deltalake`` of the very Arrow tables the sink builds
  (converted before the clock starts), one append per batch, same partitioning: the floor
  any Delta writer pays;
* ``ratio`` — sink events/s over baseline events/s (medians over the rounds);
* ``setup`` — events, batch size, rounds, CPU count, versions.

Scenarios run interleaved, round after round, so noise on a shared machine hits all alike;
headline figures are medians, every round's figures are listed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
from deltalake import write_deltalake

from personify.clock import format_timestamp
from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.normalize import partition_key
from personify.lake.schema import PARTITION_COLUMN, events_to_table
from personify.lake.sink import LakeSink
from personify.lake.table import Lake
from personify.quality.checks import QualityContext

_CATEGORIES = ["shoes", "hats", "books", "garden", "toys", "music"]
_EVENTS = ["Product Viewed", "Product Added", "Video Played", "Article Viewed"]
_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def shop_events(
    count: int, users: int, *, end: datetime, days: int = 60, seed: int = 11
) -> list[dict[str, Any]]:
    """``count`` normalised events of ``users`` users over ``days`` days before ``end``."""
    rng = random.Random(seed)
    span_s = days * 86_400
    out: list[dict[str, Any]] = []
    received = format_timestamp(end)
    for number in range(count):
        user = rng.randrange(users)
        moment = end - timedelta(seconds=rng.uniform(0, span_s))
        roll = rng.random()
        event: dict[str, Any] = {
            "anonymousId": f"anon-{user}",
            "messageId": f"bench-{number}",
            "timestamp": format_timestamp(moment),
            "receivedAt": received,
            "sourceId": "bench",
            "context": {"userAgent": _AGENT, "ip": "203.0.113.9", "locale": "en-GB"},
        }
        if user % 3 and roll < 0.6:
            event["userId"] = f"user-{user}"
        if roll < 0.2:
            event |= {
                "type": "page",
                "name": "Catalog",
                "properties": {"path": "/c", "category": rng.choice(_CATEGORIES)},
            }
        elif roll < 0.93:
            event |= {
                "type": "track",
                "event": rng.choice(_EVENTS),
                "properties": {
                    "product_id": f"p{rng.randrange(5000)}",
                    "category": rng.choice(_CATEGORIES),
                    "price": round(rng.uniform(1, 200), 2),
                    "tags": ["sale"] if rng.random() < 0.2 else [],
                },
            }
        elif roll < 0.97:
            event |= {
                "type": "track",
                "event": "Order Completed",
                "userId": f"user-{user}",
                "properties": {
                    "revenue": round(rng.uniform(5, 400), 2),
                    "products": [
                        {
                            "product_id": f"p{rng.randrange(5000)}",
                            "category": rng.choice(_CATEGORIES),
                        }
                    ],
                },
            }
        else:
            event |= {
                "type": "identify",
                "userId": f"user-{user}",
                "traits": {"plan": rng.choice(["free", "pro"])},
            }
        out.append(event)
    return out


def _records(events: list[dict[str, Any]]) -> list[LogRecord]:
    encode = msgspec.json.Encoder().encode
    return [
        LogRecord(encode(e), partition_key(e), f"{e['sourceId']}:{e['messageId']}") for e in events
    ]


async def _fill_log(path: Path, records: list[LogRecord]) -> None:
    log = SQLiteEventLog(path, durability="off", max_pending_events=len(records) + 1)
    await log.start()
    for start in range(0, len(records), 20_000):
        await log.append(records[start : start + 20_000])
    await log.close()


async def _run_sink(folder: Path, batch: int, checks: bool) -> float:
    log = SQLiteEventLog(folder / "events.db", durability="off")
    await log.start()
    sink = LakeSink(
        log,
        Lake(str(folder / "lake")),
        max_batch_events=batch,
        linger_ms=0,
        quality=QualityContext(now=datetime.now(UTC)) if checks else None,
    )
    started = time.perf_counter()
    while (await sink.process_once()).read:
        pass
    elapsed = time.perf_counter() - started
    await log.close()
    return elapsed


def _arrow_batches(events: list[dict[str, Any]], batch: int) -> list[pa.Table]:
    tables: list[pa.Table] = []
    schema: pa.Schema | None = None
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        table = events_to_table(
            chunk,
            partitions=[0] * len(chunk),
            offsets=[str(start + i + 1) for i in range(len(chunk))],
            existing=schema,
        )
        schema = table.schema if schema is None else pa.unify_schemas([schema, table.schema])
        tables.append(table)
    return tables


def _run_baseline(folder: Path, tables: list[pa.Table]) -> float:
    target = str(folder / "raw")
    started = time.perf_counter()
    for table in tables:
        write_deltalake(
            target, table, partition_by=[PARTITION_COLUMN], mode="append", schema_mode="merge"
        )
    return time.perf_counter() - started


def main() -> None:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    end = datetime.now(UTC)
    say(f"generating {args.events} events")
    events = shop_events(args.events, max(1, args.events // 10), end=end)
    records = _records(events)
    tables = _arrow_batches(events, args.batch)
    root = Path(tempfile.mkdtemp(prefix="personify-bench-lake-"))
    rounds: list[dict[str, float]] = []
    try:
        for number in range(args.rounds):
            figures: dict[str, float] = {}
            for scenario in ("sink", "baseline", "sink_without_checks"):
                folder = root / f"{scenario}-{number}"
                folder.mkdir()
                if scenario == "baseline":
                    seconds = _run_baseline(folder, tables)
                else:
                    asyncio.run(_fill_log(folder / "events.db", records))
                    seconds = asyncio.run(_run_sink(folder, args.batch, checks=scenario == "sink"))
                figures[scenario] = round(args.events / seconds)
                say(f"round {number + 1}: {scenario} {figures[scenario]:,} events/s")
                shutil.rmtree(folder)
            rounds.append(figures)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def median(name: str) -> int:
        return round(statistics.median(r[name] for r in rounds))

    result = {
        "benchmark": "lake_write",
        "sink": {"events_per_s": median("sink")},
        "sink_without_checks": {"events_per_s": median("sink_without_checks")},
        "baseline": {
            "what": "deltalake.write_deltalake of the same Arrow tables, one append per batch",
            "events_per_s": median("baseline"),
        },
        "ratio": round(median("sink") / median("baseline"), 3),
        "ratio_without_checks": round(median("sink_without_checks") / median("baseline"), 3),
        "rounds": rounds,
        "setup": {
            "events": args.events,
            "batch_events": args.batch,
            "batches": len(tables),
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "deltalake": metadata.version("deltalake"),
            "pyarrow": metadata.version("pyarrow"),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
