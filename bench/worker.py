"""Stream-worker benchmark: events applied to profiles per second by one worker process.

Run it with ``.venv/bin/python bench/worker.py [--events N] [--users U] [--batch-sizes
1000,10000,50000] [--state sqlite,postgresql] [--quick]``. It prints ONE JSON object on stdout
(progress goes to stderr) with, measured in this run:

* ``runs.<state>.<batch size>`` — a realistic shop's traffic (anonymous browsing, identify,
  second devices, aliases, orders; every event with a browser ``context``) is put in a fresh
  SQLite event log, then one ``StreamWorker`` (built by ``Runtime``, the code ``personify
  worker`` runs, driven by ``StreamWorker.step``) drains it into a fresh state database with
  the default settings and features: SQLite in the data folder (``sqlite``), or a fresh
  PostgreSQL database on ``PERSONIFY_TEST_POSTGRES_URL``'s server (``postgresql``, dropped
  after). Each run is a process of its own, so its memory figures are its own. Figures:
  events/s by wall clock, CPU µs per event (this process's CPU time, every thread), seconds
  per batch, and peak memory: ``rss_peak_delta_bytes`` (the kernel's high-water mark VmHWM,
  reset through ``/proc/self/clear_refs`` once the log is filled, minus VmRSS at that moment:
  everything the drain added, C libraries and SQLite's cache included) and
  ``python_peak_bytes`` (tracemalloc's peak of Python allocations during the drain, taken in
  a second, traced run of the same events, because tracing slows the worker down);
* ``baseline_in_memory`` — the same events decoded and applied to in-memory profile states
  by the per-event path (the profile maths alone, no database, no log): the old ceiling the
  worker is compared with. Reported as unavailable if that path is gone from the code;
* ``baseline_sqlite_insert`` — the same payloads inserted, 1,000 rows per transaction, into
  a bare SQLite table through the sqlite3 module: the cost of just writing each event once;
* ``worker`` / ``worker_postgresql`` — the headline runs (batch 10,000); ``ratio_*`` their
  rate over each baseline; ``meets_target`` — SQLite at least 50,000 events/s and twice the
  in-memory baseline, PostgreSQL at least 30,000 events/s, by wall clock.
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
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from personify.clock import format_timestamp

BENCH_DIR = Path(__file__).resolve().parent
TARGET_SQLITE_EVENTS_PER_S = 50_000
TARGET_POSTGRESQL_EVENTS_PER_S = 30_000
TARGET_RATIO_TO_IN_MEMORY = 2.0
HEADLINE_BATCH = 10_000
STATES = ("sqlite", "postgresql")
DRAIN_TIMEOUT_S = 900.0
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


def shop_traffic(
    events: int, users: int, *, seed: int = 1, days: float = 3.0
) -> list[dict[str, Any]]:
    """``events`` normalised events of ``users`` people over ``days`` days (each person's
    visits start at a random moment in them), in time order."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=days)
    per_user = max(1, events // users)
    out: list[tuple[float, dict[str, Any]]] = []
    for u in range(users):
        user_id = f"user-{u:06d}"
        devices = [(f"anon-{u:06d}-{d}", rng.choice(_AGENTS)) for d in range(rng.randint(1, 3))]
        minute = rng.uniform(0, days * 24 * 60 - per_user * 3)
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
    """The per-event path over in-memory states: decode, apply, compact, encode."""
    try:
        from personify.profiles.events import view_event
        from personify.profiles.features import FeatureSet
        from personify.profiles.state import (
            ProfileState,
            apply_event,
            compact_state,
            encode_state,
        )
    except ImportError as exc:
        # the worker's rewrite may retire the per-event path; say so instead of failing
        return {"unavailable": f"the per-event profile path is gone: {exc}"}
    features = FeatureSet()
    started, cpu = time.perf_counter(), time.process_time()
    states: dict[str, Any] = {}
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
        "cpu_us_per_event": round(cpu_s * 1e6 / len(payloads), 2),
        "seconds": round(elapsed, 3),
    }


def baseline_sqlite_insert(payloads: list[bytes], folder: Path) -> dict[str, Any]:
    """Each payload inserted once into a bare SQLite table, 1,000 rows per transaction."""
    conn = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (event_key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(payloads), 1000):
        rows = [(f"k{start + i}", p.decode()) for i, p in enumerate(payloads[start : start + 1000])]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return {
        "rows_per_s": round(len(payloads) / elapsed),
        "cpu_us_per_row": round(cpu_s * 1e6 / len(payloads), 2),
        "seconds": round(elapsed, 3),
    }


# -- one run, in a process of its own ---------------------------------------------------------


def proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_rss_peak() -> bool:
    """Reset the kernel's VmHWM to the current RSS (Linux 4.0+); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def count_profiles(db: Any) -> dict[str, int | None]:
    """Profiles and merges in the state database, or None where the tables changed."""
    import sqlalchemy as sa

    try:
        from personify.profiles.tables import profile_merges, profiles

        with db.engine.connect() as conn:
            return {
                "profiles": conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar(),
                "merges": conn.execute(
                    sa.select(sa.func.count()).select_from(profile_merges)
                ).scalar(),
            }
    except (ImportError, sa.exc.SQLAlchemyError):
        return {"profiles": None, "merges": None}


async def run_worker(
    payloads: list[bytes],
    events: list[dict[str, Any]],
    folder: Path,
    batch: int,
    state_url: str | None,
    traced: bool,
) -> dict[str, Any]:
    """Fill a fresh SQLite log, then drain it with the runtime's ``StreamWorker``."""
    from personify.eventlog.base import LogRecord
    from personify.events.normalize import partition_key
    from personify.runtime import Runtime
    from personify.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=folder / "data",
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        worker_batch_size=batch,
        **({"state_url": state_url} if state_url else {}),
    )
    services = Runtime.build(settings)
    await services.start()
    try:
        for start in range(0, len(payloads), 5000):
            chunk = range(start, min(start + 5000, len(payloads)))
            await services.log.append(
                [LogRecord(payloads[i], partition_key(events[i])) for i in chunk]
            )
        progress(f"  log filled with {len(payloads)} events; draining in batches of {batch}")
        worker = services.worker
        gc.collect()
        rss_before = proc_status_bytes("VmRSS")
        hwm_reset = reset_rss_peak()
        if traced:
            tracemalloc.start()
        batch_seconds: list[float] = []
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        started, cpu = time.perf_counter(), time.process_time()
        while worker.stats.entries_read < len(payloads):
            if time.monotonic() > deadline:
                raise RuntimeError(f"drained {worker.stats.entries_read} of {len(payloads)}")
            step_started = time.perf_counter()
            if await worker.step():
                batch_seconds.append(time.perf_counter() - step_started)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        python_peak = None
        if traced:
            python_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        hwm = proc_status_bytes("VmHWM")
        stats = worker.stats
        applied = stats.events_applied
        return {
            "events_per_s": round(applied / elapsed),
            "cpu_us_per_event": round(cpu_s * 1e6 / max(applied, 1), 2),
            "cpu_events_per_s": round(applied / cpu_s),
            "seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu_s, 3),
            "batch_size": batch,
            "batches": stats.batches,
            "batch_seconds_median": round(statistics.median(batch_seconds), 3),
            "batch_seconds_max": round(max(batch_seconds), 3),
            "events_applied": applied,
            "duplicates": stats.duplicates,
            "dead_lettered": stats.dead_lettered,
            "retries": stats.retries,
            **count_profiles(services.db),
            "lag_after": await services.log.lag(worker.group),
            "rss_before_bytes": rss_before,
            "rss_peak_delta_bytes": hwm - rss_before,
            "rss_peak_since": "drain start" if hwm_reset else "process start",
            "python_peak_bytes": python_peak,
        }
    finally:
        await services.close()


def child_main(spec: dict[str, Any]) -> None:
    """One measured drain (``--run``): its figures as one JSON line on stdout."""
    from personify.cli.tuning import tune_process

    events = shop_traffic(spec["events"], spec["users"])
    payloads = [msgspec.json.encode(e) for e in events]
    # the collector and allocator as `personify worker` sets them; the generated traffic lives
    # as long as the run, so it is frozen out of the collector's sight, as a worker process
    # that reads the log does not hold it at all
    tune_process()
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="personify-bench-worker-") as tmp:
        result = asyncio.run(
            run_worker(
                payloads, events, Path(tmp), spec["batch"], spec["state_url"], spec["traced"]
            )
        )
    print(json.dumps(result))


def measure(args: argparse.Namespace, state: str, batch: int, traced: bool) -> dict[str, Any]:
    """Run one drain in a child process, with a fresh PostgreSQL database if ``state`` asks."""
    state_url = None
    if state == "postgresql":
        sys.path.insert(0, str(BENCH_DIR.parent))
        from tests.postgres import create_database

        state_url = create_database("personify_bench_worker")
    spec = {
        "events": args.events,
        "users": args.users,
        "batch": batch,
        "state_url": state_url,
        "traced": traced,
    }
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--run", json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
            timeout=DRAIN_TIMEOUT_S + 300,
            check=False,
        )
    finally:
        if state_url is not None:
            from tests.postgres import drop_database

            drop_database(state_url)
    if done.returncode != 0:
        raise RuntimeError(f"{state} run with batches of {batch} exited {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_state(args: argparse.Namespace, state: str) -> dict[str, Any]:
    """Every batch size on one state backend; a traced rerun adds the Python allocation peak."""
    runs: dict[str, Any] = {}
    for batch in args.batch_sizes:
        progress(f"{state}, batches of {batch}:")
        figures = measure(args, state, batch, traced=False)
        progress(
            f"  {figures['events_per_s']} events/s, {figures['cpu_us_per_event']} CPU µs/event, "
            f"RSS peak +{figures['rss_peak_delta_bytes'] / 2**20:.1f} MiB"
        )
        if args.tracemalloc:
            traced = measure(args, state, batch, traced=True)
            figures["python_peak_bytes"] = traced["python_peak_bytes"]
            figures["traced_run_seconds"] = traced["seconds"]
            progress(f"  Python allocations peak {traced['python_peak_bytes'] / 2**20:.1f} MiB")
        runs[str(batch)] = figures
    return runs


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded, or None when either is missing."""
    return round(a / b, 3) if a is not None and b else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument(
        "--batch-sizes",
        default="1000,10000,50000",
        help="comma-separated worker batch sizes, one fresh run each",
    )
    parser.add_argument("--batch", type=int, default=None, help="one batch size (old option)")
    parser.add_argument(
        "--state",
        default="sqlite,postgresql",
        help="comma-separated state backends: sqlite, postgresql (a fresh database on "
        "PERSONIFY_TEST_POSTGRES_URL's server, dropped after)",
    )
    parser.add_argument(
        "--no-tracemalloc",
        dest="tracemalloc",
        action="store_false",
        help="skip the traced reruns that measure the peak of Python allocations",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 events of 800 users")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.users = min(args.events, 20_000), min(args.users, 800)
    sizes = [args.batch] if args.batch else args.batch_sizes.split(",")
    args.batch_sizes = [int(size) for size in sizes if str(size).strip()]
    args.state = [name.strip() for name in args.state.split(",") if name.strip()]
    unknown = sorted(set(args.state) - set(STATES))
    if unknown or not args.state or not args.batch_sizes:
        parser.error(f"--state takes {', '.join(STATES)}; --batch-sizes at least one size")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure the baselines, then each state backend at each batch size; print the JSON."""
    args = parse_args(argv)
    if args.run is not None:
        child_main(json.loads(args.run))
        return
    from personify.cli.tuning import tune_process

    started_at = datetime.now(UTC)
    events = shop_traffic(args.events, args.users)
    payloads = [msgspec.json.encode(e) for e in events]
    tune_process()
    gc.collect()
    gc.freeze()
    mean_bytes = sum(map(len, payloads)) // len(payloads)
    progress(f"{len(events)} events of {args.users} users, {mean_bytes} bytes each on average")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="personify-bench-worker-") as tmp:
        memory = baseline_in_memory(payloads)
        progress(f"in-memory baseline: {memory.get('events_per_s', memory.get('unavailable'))}")
        inserts = baseline_sqlite_insert(payloads, Path(tmp))
        progress(f"sqlite insert baseline: {inserts['rows_per_s']} rows/s")
    runs = {state: run_state(args, state) for state in args.state}
    headline = str(HEADLINE_BATCH if HEADLINE_BATCH in args.batch_sizes else args.batch_sizes[0])
    sqlite_run = runs.get("sqlite", {}).get(headline)
    postgres_run = runs.get("postgresql", {}).get(headline)
    sqlite_rate = sqlite_run["events_per_s"] if sqlite_run else None
    postgres_rate = postgres_run["events_per_s"] if postgres_run else None
    memory_rate = memory.get("events_per_s")
    result = {
        "benchmark": "worker",
        "date": started_at.isoformat(timespec="seconds"),
        "events": len(events),
        "users": args.users,
        "mean_event_bytes": mean_bytes,
        "headline_batch_size": int(headline),
        "worker": sqlite_run,
        "worker_postgresql": postgres_run,
        "baseline_in_memory": memory,
        "baseline_sqlite_insert": inserts,
        "ratio_to_in_memory": ratio(sqlite_rate, memory_rate),
        "ratio_to_sqlite_insert": ratio(sqlite_rate, inserts["rows_per_s"]),
        "ratio_postgresql_to_in_memory": ratio(postgres_rate, memory_rate),
        "runs": runs,
        "targets": {
            "sqlite_events_per_s": TARGET_SQLITE_EVENTS_PER_S,
            "sqlite_ratio_to_in_memory": TARGET_RATIO_TO_IN_MEMORY,
            "postgresql_events_per_s": TARGET_POSTGRESQL_EVENTS_PER_S,
        },
        "meets_target": {
            "sqlite_events_per_s": None
            if sqlite_rate is None
            else sqlite_rate >= TARGET_SQLITE_EVENTS_PER_S,
            "sqlite_ratio_to_in_memory": None
            if sqlite_rate is None or memory_rate is None
            else sqlite_rate >= TARGET_RATIO_TO_IN_MEMORY * memory_rate,
            "postgresql_events_per_s": None
            if postgres_rate is None
            else postgres_rate >= TARGET_POSTGRESQL_EVENTS_PER_S,
        },
        "memory": (
            "rss_peak_delta_bytes: VmHWM after the drain minus VmRSS before it, VmHWM reset "
            "through /proc/self/clear_refs when the drain starts (the whole process: Python, "
            "SQLite, drivers); python_peak_bytes: tracemalloc peak during the drain, in a "
            "separate traced run of the same events"
        ),
        "setup": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "postgres_url": os.environ.get(
                "PERSONIFY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
            )
            if "postgresql" in args.state
            else None,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
