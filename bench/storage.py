"""Storage benchmark: state database and event log bytes per event, before and after pruning.

Run it with ``.venv/bin/python bench/storage.py [--events N] [--users U] [--days D] [--batch B]
[--quick] [--keep-data DIR]``. It prints ONE JSON object on stdout (progress goes to stderr)
with, measured in this run:

* ``drain`` — a realistic shop's traffic (``shop_traffic`` from bench/worker.py, spread over
  ``--days`` days) is put in a fresh SQLite event log, then one ``StreamWorker`` (built by
  ``Runtime``, driven by ``StreamWorker.step``, as bench/worker.py's child does) drains it into
  a fresh SQLite state database with the default settings and features; the lake sink is off
  (the lake is not in these figures, and with it on its consumer group would hold the log);
* ``before`` / ``after`` — the state database and the event log measured before pruning and
  after it: the file size once the WAL is checkpointed (``PRAGMA wal_checkpoint(TRUNCATE)``,
  free pages included), and the file size after ``VACUUM`` (the headline, ``bytes_per_event``
  is this one over the events generated), bytes per table and index (SQLite's ``dbstat``),
  rows per table, and the payload copies each holds (``applied_events`` rows with a payload;
  log records; profile versions holding any payload's fields, which should be none);
* ``prune`` — what ``ProfilePruner.prune`` (timeline and dedupe keys, then history) and
  ``LogTrimmer.trim`` (``EventLog.truncate``; the worker's group has committed everything)
  removed, run with the default retentions against an injected ``FrozenClock`` set one day
  past the longest of them (``prune_clock``), and how long each took;
* ``baseline`` — the raw payloads (their summed JSON lengths over the events), and the
  dedupe keys alone (``sourceId:messageId``, as the worker forms them) in a bare SQLite table
  ``(event_key TEXT PRIMARY KEY)`` after ``VACUUM``: the rowid table the task names (the key
  is stored twice, table and autoindex) and the same as ``WITHOUT ROWID`` (stored once);
* ``meets_target`` — issue 13: at most 150 bytes per event in the state database after
  pruning; at most one copy of any payload inside the retention (before pruning everything is
  inside it), in the state database alone and in the state database and the log together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR)]

from worker import progress, shop_traffic  # noqa: E402  (bench/worker.py: the shop's traffic)

TARGET_STATE_BYTES_PER_EVENT = 150
TARGET_PAYLOAD_COPIES = 1
APPEND_CHUNK = 5000
DRAIN_TIMEOUT_S = 1800.0
# a field every payload has and no profile state keeps: a version holding it holds a payload
PAYLOAD_MARKER = '"sentAt"'


def file_bytes(path: Path) -> int:
    """The size of a SQLite file and its WAL (0 for what is missing)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def measure_sqlite(path: Path, events: int) -> dict[str, Any]:
    """Checkpoint, then VACUUM, a SQLite file; its sizes, its bytes per table and index, its
    rows per table."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30.0)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpointed = file_bytes(path)
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        started = time.perf_counter()
        conn.execute("VACUUM")
        # in WAL mode VACUUM writes through the WAL: fold it back before reading the size
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        vacuum_s = time.perf_counter() - started
        vacuumed = file_bytes(path)
        try:
            objects = {
                str(name): int(size)
                for name, size in conn.execute(
                    "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
                )
            }
        except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            objects = {}
        tables = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        rows = {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
    return {
        "bytes_checkpointed": checkpointed,
        "free_bytes_checkpointed": free_pages * page_size,
        "bytes_vacuumed": vacuumed,
        "bytes_per_event": round(vacuumed / events, 1),
        "bytes_per_event_checkpointed": round(checkpointed / events, 1),
        "vacuum_seconds": round(vacuum_s, 3),
        "bytes_by_object": objects if objects else "dbstat unavailable in this SQLite build",
        "rows": rows,
    }


def state_payload_copies(path: Path) -> dict[str, int]:
    """Payload copies in the state database: timeline rows with a payload, and versions whose
    diff or snapshot carries a payload's fields (expected: none)."""
    with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as conn:
        timeline, timeline_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM applied_events "
            "WHERE payload <> ''"
        ).fetchone()
        versions = conn.execute(
            "SELECT count(*) FROM profile_versions WHERE instr(diff, ?) > 0 "
            "OR instr(coalesce(snapshot, ''), ?) > 0",
            (PAYLOAD_MARKER, PAYLOAD_MARKER),
        ).fetchone()[0]
        # the most copies of one event's payload in the timeline (its key is the primary key)
        most = conn.execute(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM applied_events "
            "WHERE payload <> '' GROUP BY message_id)"
        ).fetchone()[0]
    return {
        "applied_events_with_payload": int(timeline),
        "applied_events_payload_bytes": int(timeline_bytes),
        "versions_with_payload": int(versions),
        "most_copies_of_one_payload": int(most),
    }


def log_records(path: Path) -> int:
    """The records the SQLite event log holds."""
    with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as conn:
        return int(conn.execute("SELECT coalesce(sum(count), 0) FROM chunk").fetchone()[0])


def measure_all(folder: Path, events: int) -> dict[str, Any]:
    """The state database, the event log and the payload copies, each file vacuumed."""
    state_path, log_path = folder / "personify.db", folder / "events.db"
    state = measure_sqlite(state_path, events)
    log = measure_sqlite(log_path, events)
    copies = state_payload_copies(state_path)
    records = log_records(log_path)
    in_state = copies["applied_events_with_payload"] + copies["versions_with_payload"]
    others = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in {"personify.db", "events.db", "pii_hash.key"} and p.stat().st_size
    )
    return {
        "state_db": state,
        "event_log": {**log, "records": records},
        "payload_copies": {
            **copies,
            "event_log_records": records,
            "lake": 0,
            "state_db_per_event": round(in_state / events, 3),
            "state_db_and_log_per_event": round((in_state + records) / events, 3),
        },
        "other_nonempty_files": others,
    }


def baseline(payloads: list[bytes], keys: list[str], folder: Path) -> dict[str, Any]:
    """Raw payload bytes per event, and the dedupe keys alone in a bare SQLite table."""
    events = len(payloads)
    out: dict[str, Any] = {
        "raw_payload_bytes_per_event": round(sum(map(len, payloads)) / events, 1),
    }
    for name, suffix in (
        ("dedupe_keys_table", ""),
        ("dedupe_keys_without_rowid", " WITHOUT ROWID"),
    ):
        path = folder / f"{name}.db"
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(f"CREATE TABLE keys (event_key TEXT PRIMARY KEY){suffix}")
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO keys VALUES (?)", ((k,) for k in keys))
            conn.execute("COMMIT")
            conn.execute("VACUUM")
        out[f"{name}_bytes_per_event"] = round(path.stat().st_size / events, 1)
        path.unlink()
    out["mean_event_key_chars"] = round(sum(map(len, keys)) / events, 1)
    return out


def bench_settings(folder: Path, batch: int) -> Any:
    """The default settings, embedded under ``folder``, worker and lake sink off."""
    from personify.settings import Settings

    return Settings(
        _env_file=None,
        data_dir=folder,
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        run_lake_sink=False,
        worker_batch_size=batch,
    )


async def fill_and_drain(
    payloads: list[bytes], partitions: list[str], settings: Any
) -> dict[str, Any]:
    """Fill a fresh SQLite log, then drain it with the runtime's ``StreamWorker``."""
    from personify.eventlog.base import LogRecord
    from personify.runtime import Runtime

    services = Runtime.build(settings)
    await services.start()
    try:
        started = time.perf_counter()
        for start in range(0, len(payloads), APPEND_CHUNK):
            chunk = range(start, min(start + APPEND_CHUNK, len(payloads)))
            await services.log.append([LogRecord(payloads[i], partitions[i]) for i in chunk])
        fill_s = time.perf_counter() - started
        progress(
            f"  log filled in {fill_s:.1f} s; draining in batches of {settings.worker_batch_size}"
        )
        worker = services.worker
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        started, cpu = time.perf_counter(), time.process_time()
        next_report = 100_000
        while worker.stats.entries_read < len(payloads):
            if time.monotonic() > deadline:
                raise RuntimeError(f"drained {worker.stats.entries_read} of {len(payloads)}")
            await worker.step()
            if worker.stats.entries_read >= next_report:
                progress(f"  {worker.stats.entries_read} drained")
                next_report += 100_000
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        stats = worker.stats
        return {
            "fill_seconds": round(fill_s, 3),
            "seconds": round(elapsed, 3),
            "events_per_s": round(stats.events_applied / elapsed),
            "cpu_us_per_event": round(cpu_s * 1e6 / max(stats.events_applied, 1), 2),
            "events_applied": stats.events_applied,
            "duplicates": stats.duplicates,
            "dead_lettered": stats.dead_lettered,
            "group": worker.group,
            "lag_after": await services.log.lag(worker.group),
        }
    finally:
        await services.close()


async def prune(settings: Any, clock: Any) -> dict[str, Any]:
    """Prune profiles and trim the log once, as the scheduled jobs do, at ``clock``'s time."""
    from personify.jobs.retention import LogTrimmer
    from personify.profiles.retention import ProfilePruner
    from personify.runtime import Runtime

    services = Runtime.build(settings, clock=clock)
    await services.start()
    try:
        lag = await services.log.lag(services.worker.group)
        if lag:
            raise RuntimeError(f"the worker's group has {lag} records uncommitted: no trim")
        pruner = ProfilePruner.from_settings(settings, services.db, clock=clock)
        profiles = await asyncio.to_thread(pruner.prune)
        started = time.perf_counter()
        trimmer = LogTrimmer(
            services.log, retention_hours=settings.eventlog_retention_hours, clock=clock
        )
        trimmed = await trimmer.trim()
        trim_s = time.perf_counter() - started
        return {
            "profiles": profiles.to_dict(),
            "event_log": {**trimmed.to_dict(), "elapsedSeconds": round(trim_s, 3)},
        }
    finally:
        await services.close()


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Generate, drain, measure, prune, measure; the result object."""
    from personify.cli.tuning import tune_process
    from personify.clock import FrozenClock

    started_at = datetime.now(UTC)
    started = time.perf_counter()
    events = shop_traffic(args.events, args.users, days=args.days)
    generated_s = time.perf_counter() - started
    payloads = [msgspec.json.encode(e) for e in events]
    partitions = [str(e.get("anonymousId") or e.get("userId") or "") for e in events]
    keys = [f"{e['sourceId']}:{e['messageId']}" for e in events]
    first, last = events[0]["timestamp"], events[-1]["timestamp"]
    del events
    count = len(payloads)
    progress(
        f"{count} events of {args.users} users over {args.days} days generated in "
        f"{generated_s:.1f} s, {sum(map(len, payloads)) // count} bytes each on average"
    )
    tune_process()
    gc.collect()
    gc.freeze()
    base = baseline(payloads, keys, folder)
    progress(
        f"baseline: {base['raw_payload_bytes_per_event']} raw payload bytes/event, dedupe keys "
        f"{base['dedupe_keys_table_bytes_per_event']} bytes/event "
        f"({base['dedupe_keys_without_rowid_bytes_per_event']} WITHOUT ROWID)"
    )
    data = folder / "data"
    settings = bench_settings(data, args.batch)
    drain = asyncio.run(fill_and_drain(payloads, partitions, settings))
    progress(f"  drained: {drain['events_per_s']} events/s, lag after {drain['lag_after']}")
    del payloads, partitions, keys
    gc.collect()
    before = measure_all(data, count)
    progress(
        f"before pruning: state {before['state_db']['bytes_per_event']} bytes/event, log "
        f"{before['event_log']['bytes_per_event']} bytes/event (vacuumed)"
    )
    longest_days = max(
        settings.profile_timeline_retention_days,
        settings.profile_history_retention_days,
        settings.eventlog_retention_hours / 24,
    )
    clock = FrozenClock(datetime.now(UTC) + timedelta(days=longest_days + 1))
    pruned = asyncio.run(prune(settings, clock))
    progress(f"  pruned: {json.dumps(pruned)}")
    after = measure_all(data, count)
    progress(
        f"after pruning: state {after['state_db']['bytes_per_event']} bytes/event, log "
        f"{after['event_log']['bytes_per_event']} bytes/event (vacuumed)"
    )
    if args.keep_data:
        shutil.copytree(data, args.keep_data, dirs_exist_ok=True)
    state_after = after["state_db"]["bytes_per_event"]
    copies_before = before["payload_copies"]
    return {
        "benchmark": "storage",
        "date": started_at.isoformat(timespec="seconds"),
        "events": count,
        "users": args.users,
        "days": args.days,
        "event_times": [first, last],
        "batch_size": args.batch,
        "generate_seconds": round(generated_s, 3),
        "drain": drain,
        "retention": {
            "profile_timeline_retention_days": settings.profile_timeline_retention_days,
            "profile_history_retention_days": settings.profile_history_retention_days,
            "eventlog_retention_hours": settings.eventlog_retention_hours,
        },
        "prune_clock": clock.now().isoformat(timespec="seconds"),
        "prune_clock_is": "an injected FrozenClock one day past the longest default retention",
        "sizes_are": "bytes_per_event: the file after VACUUM and a WAL checkpoint (TRUNCATE) "
        "over the events generated; bytes_checkpointed: the file as the run left it, "
        "free pages included, after the checkpoint alone",
        "before": before,
        "prune": pruned,
        "after": after,
        "baseline": base,
        "ratio_state_after_to_raw_payload": round(
            state_after / base["raw_payload_bytes_per_event"], 3
        ),
        "ratio_state_after_to_dedupe_keys": round(
            state_after / base["dedupe_keys_table_bytes_per_event"], 3
        ),
        "targets": {
            "state_db_bytes_per_event_after_pruning": TARGET_STATE_BYTES_PER_EVENT,
            "payload_copies_inside_retention": TARGET_PAYLOAD_COPIES,
        },
        "meets_target": {
            "state_db_bytes_per_event_after_pruning": state_after <= TARGET_STATE_BYTES_PER_EVENT,
            "payload_copies_in_state_db_inside_retention": (
                copies_before["most_copies_of_one_payload"] <= TARGET_PAYLOAD_COPIES
                and copies_before["versions_with_payload"] == 0
            ),
            "payload_copies_in_state_db_and_log_inside_retention": copies_before[
                "state_db_and_log_per_event"
            ]
            <= TARGET_PAYLOAD_COPIES,
        },
        "setup": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument(
        "--days", type=float, default=30.0, help="days the traffic is spread over (30)"
    )
    parser.add_argument("--batch", type=int, default=10_000, help="worker batch size (10,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 events of 10,000 users")
    parser.add_argument(
        "--keep-data", type=Path, default=None, help="copy the pruned data folder here"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.users = min(args.events, 100_000), min(args.users, 10_000)
    if args.events < 1 or args.users < 1 or args.days <= 0 or args.batch < 1:
        parser.error("--events, --users, --batch and --days must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark in a temporary folder; print the JSON."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="personify-bench-storage-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
