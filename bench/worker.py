"""Stream-worker benchmark: events applied to profiles per second by one worker on SQLite.

Run it with ``.venv/bin/python bench/worker.py [--events N] [--users U] [--batch B]``. It
prints ONE JSON object on stdout (progress goes to stderr) with, measured in this run:

* ``worker`` — a realistic shop's traffic (anonymous browsing, identify, second devices,
  aliases, orders; every event with a browser ``context``) is put in a fresh SQLite event
  log, then one ``StreamWorker`` (the code ``personify worker`` runs) drains it into a fresh
  SQLite state database with the default settings: exactly-once bookkeeping, identity
  merges, timeline rows, one version row per profile per batch, log commits. Figures:
  events/s by wall clock and by this process's CPU time (the machine is shared; CPU time
  shows what the worker itself needs), batches, profiles, merges;
* ``baseline_in_memory`` — the same events decoded and applied to in-memory profile states
  (the profile maths alone, no database, no log, the cyclic garbage collector paused as the
  worker pauses it during a batch): the ceiling the worker is compared with;
* ``baseline_sqlite_insert`` — the same payloads inserted, 1,000 rows per transaction, into
  a bare SQLite table through the sqlite3 module: the cost of just writing each event once;
* ``ratio_*`` — the worker's rate over each baseline; ``meets_target`` — at least 20,000
  events/s by wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.cli.tuning import tune_process
from personify.clock import format_timestamp
from personify.eventlog.base import LogRecord
from personify.events.normalize import partition_key
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.state import ProfileState, apply_event, compact_state, encode_state
from personify.profiles.tables import profile_merges, profiles
from personify.runtime import Runtime
from personify.settings import Settings

TARGET_EVENTS_PER_S = 20_000
_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Mobile Safari/537.36",
]
_CATEGORIES = ["shoes", "hats", "books", "garden", "kitchen", "toys"]
_REFERRERS = ["https://www.google.com/", "https://news.example/", "", ""]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shop_traffic(events: int, users: int, *, seed: int = 1) -> list[dict[str, Any]]:
    """``events`` normalised events of ``users`` people over three days, in time order."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=3)
    per_user = max(1, events // users)
    out: list[tuple[float, dict[str, Any]]] = []
    for u in range(users):
        user_id = f"user-{u:06d}"
        devices = [(f"anon-{u:06d}-{d}", rng.choice(_AGENTS)) for d in range(rng.randint(1, 3))]
        minute = rng.uniform(0, 3 * 24 * 60 - per_user * 3)
        identified = False
        for n in range(per_user):
            minute += rng.expovariate(1 / 2) if rng.random() < 0.9 else rng.uniform(35, 240)
            device, agent = rng.choice(devices)
            moment = format_timestamp(start + timedelta(minutes=minute))
            category = rng.choice(_CATEGORIES)
            data: dict[str, Any] = {
                "messageId": f"{user_id}-{n}",
                "anonymousId": device,
                "timestamp": moment,
                "receivedAt": moment,
                "sentAt": moment,
                "sourceId": "bench",
                "context": {
                    "userAgent": agent,
                    "library": {"name": "analytics.js", "version": "5.2.0"},
                    "locale": "en-GB",
                    "page": {
                        "url": f"https://shop.example/c/{category}",
                        "path": f"/c/{category}",
                        "referrer": rng.choice(_REFERRERS),
                    },
                },
            }
            if identified:
                data["userId"] = user_id
            roll = rng.random()
            if roll < 0.35:
                data |= {"type": "page", "properties": {"category": category, "path": "/c"}}
            elif roll < 0.75:
                data |= {
                    "type": "track",
                    "event": "Product Viewed",
                    "properties": {
                        "product_id": f"sku-{rng.randint(1, 500)}",
                        "category": category,
                        "price": rng.randint(5, 120),
                    },
                }
            elif roll < 0.82:
                data |= {
                    "type": "identify",
                    "userId": user_id,
                    "traits": {"plan": rng.choice(["free", "pro"]), "visits": n},
                }
                identified = True
            elif roll < 0.9:
                data |= {
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": f"o-{u}-{n}",
                        "revenue": round(rng.uniform(5, 300), 2),
                        "products": [{"product_id": "sku-1", "category": category}],
                    },
                }
            elif roll < 0.92 and identified:
                data |= {"type": "alias", "userId": user_id, "previousId": f"crm-{u}"}
            else:
                data |= {
                    "type": "track",
                    "event": "Video Played",
                    "properties": {"tags": [category, "video"], "seconds": rng.randint(5, 600)},
                }
            out.append((minute, data))
    out.sort(key=lambda item: item[0])
    return [data for _, data in out[:events]]


def baseline_in_memory(payloads: list[bytes]) -> dict[str, Any]:
    features = FeatureSet()
    started, cpu = time.perf_counter(), time.process_time()
    states: dict[str, ProfileState] = {}
    for payload in payloads:
        event = view_event(msgspec.json.decode(payload))
        state = states.get(event.ids[0])
        if state is None:
            state = states[event.ids[0]] = ProfileState()
        apply_event(state, event, features)
    for state in states.values():
        compact_state(state, features)
        encode_state(state)
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {
        "events_per_s": round(len(payloads) / elapsed),
        "cpu_events_per_s": round(len(payloads) / cpu_s),
        "seconds": round(elapsed, 3),
    }


def baseline_sqlite_insert(payloads: list[bytes], folder: Path) -> dict[str, Any]:
    conn = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (event_key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
    started = time.perf_counter()
    for start in range(0, len(payloads), 1000):
        rows = [(f"k{start + i}", p.decode()) for i, p in enumerate(payloads[start : start + 1000])]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return {"rows_per_s": round(len(payloads) / elapsed), "seconds": round(elapsed, 3)}


async def run_worker(
    payloads: list[bytes], events: list[dict[str, Any]], folder: Path, batch: int
) -> dict[str, Any]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=folder / "data",
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        worker_batch_size=batch,
    )
    services = Runtime.build(settings)
    await services.start()
    try:
        for start in range(0, len(payloads), 5000):
            chunk = range(start, min(start + 5000, len(payloads)))
            await services.log.append(
                [LogRecord(payloads[i], partition_key(events[i])) for i in chunk]
            )
        progress(f"log filled with {len(payloads)} events; draining with one worker")
        worker = services.worker
        started, cpu = time.perf_counter(), time.process_time()
        while worker.stats.entries_read < len(payloads):
            await worker.step()
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        with services.db.engine.connect() as conn:
            profile_count = conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar()
            merges = conn.execute(sa.select(sa.func.count()).select_from(profile_merges)).scalar()
        stats = worker.stats
        return {
            "events_per_s": round(stats.events_applied / elapsed),
            "cpu_events_per_s": round(stats.events_applied / cpu_s),
            "seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu_s, 3),
            "events_applied": stats.events_applied,
            "dead_lettered": stats.dead_lettered,
            "batches": stats.batches,
            "batch_size": batch,
            "profiles": profile_count,
            "merges": merges,
            "lag_after": await services.log.lag(worker.group),
        }
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()

    events = shop_traffic(args.events, args.users)
    payloads = [msgspec.json.encode(e) for e in events]
    # the collector and allocator as `personify worker` sets them; the generated traffic lives
    # as long as the run, so it is frozen out of the collector's sight, as a worker process
    # that reads the log does not hold it at all
    tune_process()
    gc.collect()
    gc.freeze()
    progress(
        f"{len(events)} events of {args.users} users, {sum(map(len, payloads)) // len(payloads)} bytes each on average"
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="personify-bench-worker-") as tmp:
        folder = Path(tmp)
        memory = baseline_in_memory(payloads)
        progress(f"in-memory baseline: {memory['events_per_s']} events/s")
        inserts = baseline_sqlite_insert(payloads, folder)
        progress(f"sqlite insert baseline: {inserts['rows_per_s']} rows/s")
        worker = asyncio.run(run_worker(payloads, events, folder, args.batch))
        progress(f"worker: {worker['events_per_s']} events/s")
    result = {
        "benchmark": "worker",
        "events": len(events),
        "users": args.users,
        "mean_event_bytes": sum(map(len, payloads)) // len(payloads),
        "worker": worker,
        "baseline_in_memory": memory,
        "baseline_sqlite_insert": inserts,
        "ratio_to_in_memory": round(worker["events_per_s"] / memory["events_per_s"], 3),
        "ratio_to_sqlite_insert": round(worker["events_per_s"] / inserts["rows_per_s"], 3),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": worker["events_per_s"] >= TARGET_EVENTS_PER_S,
        "setup": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
