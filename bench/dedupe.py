"""Dedupe benchmark: batch ingest with millions of messageIds in the window, bounded and not.

Run it with ``.venv/bin/python bench/dedupe.py [--quick] [--keys N] [--budget-mb M]
[--duration S] [--rounds R]``. It prints ONE JSON object on stdout (progress goes to stderr):

* setup: one event log file is filled, in-process and without HTTP, with ``--keys`` (default
  10 million) records of distinct dedupe keys appended just now, so all of them are inside
  the 24 h dedupe window; each server gets a copy of it;
* ``bounded`` — ``personify serve --no-worker`` with ``PERSONIFY_EVENTLOG_DEDUPE_MEMORY_MB``
  = ``--budget-mb`` (default 64, the default setting): its index holds what the budget
  allows and keeps the rest in runs on disk;
* ``unbounded`` — the same server with a budget large enough to hold every key in memory:
  the baseline.

Both servers load their index at start (``start_s``: from launch to /healthz answering),
then take ``POST /v1/batch`` with 100 new events per request from ``wrk``
(``bench/wrk/ingest.lua``, as ``bench/ingest.py`` drives it; durability ``full``), in
interleaved rounds. Every event is looked up in the index of 10 million. A third server,
``empty``, takes the same load on an empty log: what the server holds besides the index
(the writer's page cache, request buffers, the interpreter) is in its figures too. Reported
per server: events per second (median over rounds), the CPU it used per event, and the
resident memory of the server process after the rounds (``rss_mib``, VmRSS), at its peak
(``peak_rss_mib``, VmHWM), and above the empty-log server's (``rss_above_empty_mib``).

Targets: the bounded server's RSS above the empty-log server's within budget + 100 MiB, and
its throughput at least 0.8 of the unbounded one's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from ingest import (  # noqa: E402  (bench/ingest.py, the shared server and wrk drivers)
    BATCH_EVENTS,
    Scenario,
    Server,
    Wrk,
    basic_auth,
    create_source,
    log,
    personify_env,
    scratch_folder,
    spread_pct,
    to_json,
)

MEMORY_SLACK_MIB = 100
THROUGHPUT_RATIO_TARGET = 0.8
UNBOUNDED_MB = 16 * 1024
_PREFILL_BATCH = 50_000
SERVE = [sys.executable, "-m", "personify.cli", "serve", "--no-worker"]


async def prefill(path: Path, keys: int) -> float:
    """Append ``keys`` records with distinct dedupe keys to the log at ``path``; seconds."""
    from personify.eventlog.base import LogRecord
    from personify.eventlog.sqlite import SQLiteEventLog

    started = time.monotonic()
    # a budget that holds them all: the filling process's index is not what is measured
    log_ = SQLiteEventLog(
        path,
        durability="off",
        max_batch_events=_PREFILL_BATCH,
        max_pending_events=_PREFILL_BATCH,
        dedupe_memory_bytes=UNBOUNDED_MB * 1024 * 1024,
    )
    await log_.start()
    try:
        for start in range(0, keys, _PREFILL_BATCH):
            end = min(keys, start + _PREFILL_BATCH)
            records = [
                LogRecord(b"{}", f"user-{i % 50_000}", f"prefill:{i:012d}")
                for i in range(start, end)
            ]
            await log_.append(records)
            if (start // _PREFILL_BATCH) % 20 == 0:
                log(f"prefill: {end:,} of {keys:,} keys")
    finally:
        await log_.close()
    return time.monotonic() - started


def process_memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of the biggest process in ``pid``'s tree (the server, not the fsync
    helper or uvicorn's supervisor)."""
    best = {"rss_mib": 0.0, "peak_rss_mib": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if int(entry.name) != pid and parent != pid:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        hwm = int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
        if rss > best["rss_mib"]:
            best = {"rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)}
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000, help="dedupe keys in the window")
    parser.add_argument("--budget-mb", type=float, default=64.0, help="the bounded index's budget")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--quick", action="store_true", help="one 5 s round, 1 s warm-up")
    parser.add_argument("--keep-data", action="store_true", help="keep the data folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 5.0, 1, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed: `apt-get install wrk` (or run `make bench`)")
        return 2
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    budgets = {"bounded": args.budget_mb, "unbounded": float(UNBOUNDED_MB)}
    with scratch_folder(args.keep_data) as folder:
        template = folder / "template" / "events.db"
        template.parent.mkdir()
        prefill_s = asyncio.run(prefill(template, args.keys))
        log(f"prefill: {args.keys:,} keys in {prefill_s:.1f} s")

        scenarios: list[Scenario] = []
        start_s: dict[str, float] = {}
        for name in ("empty", *budgets):
            data_dir = folder / f"{name}-data"
            data_dir.mkdir()
            env = personify_env(data_dir, "full", 0.0)
            env["PERSONIFY_EVENTLOG_DEDUPE_MEMORY_MB"] = str(budgets.get(name, args.budget_mb))
            write_key = create_source(env, folder, name)
            if name != "empty":
                shutil.copyfile(template, data_dir / "events.db")
            server = Server(
                name,
                [*SERVE, "--log-level", "warning"],
                env,
                folder,
                "/healthz",
            )
            scenarios.append(
                Scenario(
                    name,
                    server,
                    "/v1/batch",
                    "batch",
                    BATCH_EVENTS,
                    data_dir,
                    basic_auth(write_key),
                )
            )

        wrk = Wrk(connections=args.connections, threads=1, cpus=None, verbose=False)
        memory: dict[str, dict[str, float]] = {}
        try:
            for scenario in scenarios:
                began = time.monotonic()
                scenario.server.start(timeout_s=900.0)
                start_s[scenario.name] = round(time.monotonic() - began, 1)
                log(f"{scenario.name} server ready in {start_s[scenario.name]} s")
            empty = scenarios[0]
            assert empty.server.process is not None
            memory["idle"] = process_memory_mib(empty.server.process.pid)
            measured = scenarios
            for scenario in measured:
                log(f"warm-up {scenario.name} ({args.warmup:g} s)")
                wrk.run(scenario, args.warmup)
            for number in range(1, args.rounds + 1):
                for scenario in measured:
                    figures = wrk.run(scenario, args.duration)
                    scenario.rounds.append(figures)
                    log(
                        f"round {number}/{args.rounds} {scenario.name}: "
                        f"{figures['events_per_s']:.0f} events/s"
                    )
            for scenario in measured:
                assert scenario.server.process is not None
                memory[scenario.name] = process_memory_mib(scenario.server.process.pid)
        finally:
            for scenario in scenarios:
                scenario.server.stop(signal.SIGTERM)

    results: dict[str, Any] = {}
    for scenario in scenarios:
        rates = [r["events_per_s"] for r in scenario.rounds]
        cpu = [r["server_cpu_us_per_event"] for r in scenario.rounds]
        results[scenario.name] = {
            "budget_mib": budgets.get(scenario.name, args.budget_mb),
            "events_per_s": round(statistics.median(rates), 1),
            "server_cpu_us_per_event": round(statistics.median(cpu), 1),
            "start_s": start_s[scenario.name],
            **memory[scenario.name],
            "rss_above_empty_mib": round(
                memory[scenario.name]["rss_mib"] - memory["empty"]["rss_mib"], 1
            ),
            "rounds": {"events_per_s": rates, "server_cpu_us_per_event": cpu},
            "spread_pct": spread_pct(rates),
            "non_2xx": sum(r["non_2xx"] for r in scenario.rounds),
        }
    bounded, unbounded, empty_log = results["bounded"], results["unbounded"], results["empty"]
    limit_mib = args.budget_mb + MEMORY_SLACK_MIB
    ratio = bounded["events_per_s"] / unbounded["events_per_s"]
    result = {
        "benchmark": "dedupe",
        "date": started.isoformat(timespec="seconds"),
        "keys_in_window": args.keys,
        "bounded": bounded,
        "unbounded": {"what": "the same server, every key in memory: the baseline", **unbounded},
        "empty": {"what": "the same server and load on an empty log", **empty_log},
        "idle": {"what": "the empty-log server before any load", **memory["idle"]},
        "throughput_ratio": round(ratio, 3),
        "throughput_ratio_target": THROUGHPUT_RATIO_TARGET,
        "memory_limit_mib": limit_mib,
        "meets_target": {
            "throughput": ratio >= THROUGHPUT_RATIO_TARGET,
            "rss_above_empty": bounded["rss_above_empty_mib"] <= limit_mib,
        },
        "setup": {
            "prefill_s": round(prefill_s, 1),
            "events_per_request": BATCH_EVENTS,
            "durability": "full",
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "cpu_count": os.cpu_count(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(to_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
