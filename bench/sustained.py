"""Sustained-rate benchmark: the collector and the worker together in ``personify serve``.

Run it with ``.venv/bin/python bench/sustained.py [--quick] [--duration S] [--start-rate R]``.
It prints ONE JSON object on stdout (progress goes to stderr), measured in this run:

* ``steps`` — each a fresh ``personify serve`` (embedded: SQLite log with full durability,
  SQLite state, the in-process stream worker, default settings) on a free port in its own
  data folder, with a write key made by ``personify sources create`` and an admin key by
  ``personify keys create``. A load generator in this process (raw asyncio sockets over
  ``--connections`` keep-alive connections) posts ``POST /v1/batch`` requests of 100 shop
  events (``bench/worker.py``'s generator: browsing, identify, second devices, aliases,
  orders, each with a browser context; every ``messageId`` distinct) at a fixed rate, open
  loop: requests are due on a schedule whatever the answers do, and wait for a free
  connection when all are busy. ``GET /v1/worker/status`` is read every second for the
  worker's lag (``lag_samples``: seconds since the load started, lag in events);
* **bounded** — a step passes when, over ``--duration`` seconds (60): (1) the mean lag over
  the last ``window`` seconds is at most the mean lag over the ``window`` seconds after the
  warm-up plus one worker batch (the lag does not grow), (2) the lag never exceeds
  ``max(3 * batch, rate * --max-lag-s)`` (5 s of traffic), and (3) the collector kept up:
  at least 99 % of the scheduled events were acknowledged 2xx, none refused. ``warmup`` is
  min(10, duration / 6) s and ``window`` min(5, duration / 6) s;
* the rate search — from ``--start-rate`` the rate doubles while steps pass, then bisects
  between the highest pass and the lowest failure until they are within ``--precision``
  (10 %) or ``--max-steps`` steps ran; ``sustained_events_per_s`` is the highest rate that
  passed;
* ``baseline_collector`` — the collector alone on the same requests: ``personify serve
  --no-worker``, closed loop (each connection sends its next request when the answer
  arrives) for ``--baseline-duration`` seconds; ``ratio_to_collector`` is the sustained rate
  over it, so it shows what applying the events costs the embedded process
  (``--baseline-connections``, 64 as ``bench/ingest.py`` uses).

Every step and the baseline report the server's CPU µs per acknowledged event (the process
and its children, from /proc) and the cores the load generator used; everything shares the
machine's cores, the load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import ingest  # noqa: E402  (bench/ingest.py: servers, keys, CPU from /proc)
from worker import shop_traffic  # noqa: E402  (bench/worker.py: the shop's traffic)

EVENTS_PER_REQUEST = 100
TARGET_EVENTS_PER_S = 40_000
# every messageId of a request template ends with this mark, replaced by the request's
# sequence number, so requests cut from the same template never repeat a messageId
SEQUENCE_MARK = b"@@SEQ@@@@@@@"
SEQUENCE_FORMAT = b"%012d"
DRAIN_WAIT_S = 10.0
log = ingest.log


def request_templates(pool_events: int, port: int, write_key: str) -> list[bytes]:
    """Whole HTTP requests of 100 events each, ``SEQUENCE_MARK`` in every ``messageId``."""
    events = shop_traffic(pool_events, max(1, pool_events // 25), seed=7)
    head = (
        "POST /v1/batch HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: {ingest.basic_auth(write_key)}\r\n"
        "Content-Type: application/json\r\n"
    )
    templates: list[bytes] = []
    for start in range(0, len(events) - EVENTS_PER_REQUEST + 1, EVENTS_PER_REQUEST):
        batch = []
        for event in events[start : start + EVENTS_PER_REQUEST]:
            # as a client sends it: the collector stamps receivedAt and the source
            sent = {k: v for k, v in event.items() if k not in ("receivedAt", "sourceId", "sentAt")}
            sent["messageId"] = f"{event['messageId']}-{SEQUENCE_MARK.decode()}"
            batch.append(sent)
        body = msgspec.json.encode({"batch": batch})
        templates.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return templates


@dataclass
class Load:
    """Requests over keep-alive connections: open loop at a rate, or closed loop."""

    port: int
    templates: list[bytes]
    connections: int
    sequence: int = 0
    acknowledged_events: int = 0
    refused: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def next_request(self) -> bytes:
        """The next template with this request's sequence number in its messageIds."""
        template = self.templates[self.sequence % len(self.templates)]
        request = template.replace(SEQUENCE_MARK, SEQUENCE_FORMAT % self.sequence)
        self.sequence += 1
        return request

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> None:
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers = head.decode("latin-1").lower()
        if "transfer-encoding: chunked" in headers:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = 0
            for line in headers.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if 200 <= status < 300:
            self.acknowledged_events += EVENTS_PER_REQUEST
        else:
            self.refused += 1

    async def _connection(self, requests: asyncio.Queue[bytes | None]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while (request := await requests.get()) is not None:
                try:
                    await self._exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    self.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        finally:
            writer.close()

    async def open_loop(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Requests due every ``100 / rate`` s for ``duration_s``; returns what was sent."""
        requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._connection(requests)) for _ in range(self.connections)]
        interval = EVENTS_PER_REQUEST / rate
        started = time.monotonic()
        scheduled = 0
        backlog_max = 0
        while (now := time.monotonic()) - started < duration_s:
            due = int((now - started) / interval) + 1
            for _ in range(due - scheduled):
                requests.put_nowait(self.next_request())
            scheduled = due
            backlog_max = max(backlog_max, requests.qsize())
            await asyncio.sleep(min(interval, 0.01))
        for _ in tasks:
            requests.put_nowait(None)
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_WAIT_S)
        for task in pending:
            task.cancel()
        return {
            "scheduled_events": scheduled * EVENTS_PER_REQUEST,
            "unsent_requests_at_end": requests.qsize(),
            "queue_max": backlog_max,
        }

    async def closed_loop(self, duration_s: float) -> None:
        """Each connection sends its next request when the previous answer arrives."""

        async def connection(stop_at: float) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while time.monotonic() < stop_at:
                    await self._exchange(reader, writer, self.next_request())
            finally:
                writer.close()

        stop_at = time.monotonic() + duration_s
        await asyncio.gather(*(connection(stop_at) for _ in range(self.connections)))


def admin_key(env: dict[str, str], cwd: Path) -> str:
    """``personify keys create bench``; returns the admin API key it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "personify.cli", "keys", "create", "bench"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("api key:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no api key in {done.stdout!r}")


def start_server(
    name: str, folder: Path, *, worker: bool, lake_process: bool = False
) -> tuple[ingest.Server, str, str]:
    """A fresh ``personify serve`` in its own data folder, with a write key and an admin key;
    with ``lake_process``, serve runs no lake writer (``PERSONIFY_RUN_LAKE_SINK=false``)."""
    data_dir = folder / f"{name}-data"
    data_dir.mkdir()
    env = ingest.personify_env(data_dir, "full", ingest.default_linger_ms())
    if lake_process:
        env["PERSONIFY_RUN_LAKE_SINK"] = "false"
    write_key = ingest.create_source(env, folder, "bench")
    key = admin_key(env, folder)
    argv = [sys.executable, "-m", "personify.cli", "serve", "--log-level", "warning"]
    if not worker:
        argv.append("--no-worker")
    server = ingest.Server(name, argv, env, folder, "/healthz")
    server.start()
    return server, write_key, key


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)


def judge(
    samples: list[tuple[float, int]],
    rate: float,
    duration_s: float,
    batch: int,
    max_lag_s: float,
    load: dict[str, Any],
) -> dict[str, Any]:
    """Whether the lag stayed bounded and the collector kept up (see the module docstring)."""
    warmup = min(10.0, duration_s / 6)
    window = min(5.0, duration_s / 6)
    early = [lag for t, lag in samples if warmup <= t < warmup + window]
    late = [lag for t, lag in samples if duration_s - window <= t <= duration_s]
    lag_early = statistics.fmean(early) if early else None
    lag_late = statistics.fmean(late) if late else None
    ceiling = max(3 * batch, rate * max_lag_s)
    lag_max = max((lag for _, lag in samples), default=None)
    kept_up = load["acknowledged_events"] >= 0.99 * load["scheduled_events"] and not load["refused"]
    reasons = []
    if lag_early is None or lag_late is None or lag_max is None:
        reasons.append("too few lag samples")
    else:
        if lag_late > lag_early + batch:
            reasons.append("lag grew")
        if lag_max > ceiling:
            reasons.append("lag over the ceiling")
    if not kept_up:
        reasons.append("collector fell behind")
    return {
        "bounded": not reasons,
        "reasons": reasons,
        "lag_early_mean": None if lag_early is None else round(lag_early),
        "lag_late_mean": None if lag_late is None else round(lag_late),
        "lag_max": lag_max,
        "lag_ceiling": round(ceiling),
        "collector_kept_up": kept_up,
    }


async def drive(
    server: ingest.Server, load: Load, key: str, rate: float, duration_s: float
) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """Open-loop load at ``rate`` while the lag is sampled every second."""
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    async def sample() -> None:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            while True:
                answer = await client.get("/v1/worker/status")
                answer.raise_for_status()
                samples.append((round(time.monotonic() - started, 2), int(answer.json()["lag"])))
                await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    try:
        sent = await load.open_loop(rate, duration_s)
    finally:
        sampler.cancel()
    return sent, samples


def start_lake_process(server: ingest.Server, folder: Path) -> subprocess.Popen[bytes]:
    """``personify lake sink`` on the server's data folder: the lake writer in its own process."""
    log = (folder / f"{server.name}-lake.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "personify.cli", "lake", "sink"],
        env={**server.env, "PERSONIFY_RUN_LAKE_SINK": "true"},
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_step(args: argparse.Namespace, folder: Path, rate: int, number: int) -> dict[str, Any]:
    """One rate on a fresh server: load for ``--duration`` seconds, then the verdict."""
    server, write_key, key = start_server(
        f"step{number}-{rate}", folder, worker=True, lake_process=args.lake_process
    )
    lake = start_lake_process(server, folder) if args.lake_process else None
    lake_cpu = 0.0
    try:
        load = Load(
            server.port, request_templates(args.pool, server.port, write_key), args.connections
        )
        cpu_before, own_before = server.cpu_seconds() or 0.0, time.process_time()
        lake_before = ingest.process_tree_cpu_seconds(lake.pid) if lake else 0.0
        sent, samples = asyncio.run(drive(server, load, key, rate, args.duration))
        seconds = args.duration
        server_cpu = (server.cpu_seconds() or 0.0) - cpu_before
        own_cpu = time.process_time() - own_before
        if lake is not None:
            lake_cpu = (ingest.process_tree_cpu_seconds(lake.pid) or 0.0) - (lake_before or 0.0)
    finally:
        if lake is not None:
            stop_process(lake)
        server.stop()
    figures = sent | {
        "acknowledged_events": load.acknowledged_events,
        "refused": load.refused,
        "errors": load.errors,
    }
    verdict = judge(samples, rate, args.duration, args.batch, args.max_lag_s, figures)
    acknowledged = max(load.acknowledged_events, 1)
    return {
        "rate_events_per_s": rate,
        **verdict,
        "acknowledged_events_per_s": round(load.acknowledged_events / seconds),
        **figures,
        "p50_ms": percentile(load.latencies_ms, 50),
        "p99_ms": percentile(load.latencies_ms, 99),
        "server_cpu_us_per_event": round(server_cpu * 1e6 / acknowledged, 1),
        "server_cpu_cores": round(server_cpu / seconds, 2),
        "lake_process_cpu_us_per_event": round(lake_cpu * 1e6 / acknowledged, 1)
        if args.lake_process
        else None,
        "lake_process_cpu_cores": round(lake_cpu / seconds, 2) if args.lake_process else None,
        "load_generator_cpu_cores": round(own_cpu / seconds, 2),
        "lag_samples": samples,
    }


def collector_alone(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``serve --no-worker`` under the same requests, closed loop: the collector's ceiling."""
    server, write_key, _ = start_server("collector", folder, worker=False)
    try:
        templates = request_templates(args.pool, server.port, write_key)
        warm = Load(server.port, templates, args.baseline_connections)
        asyncio.run(warm.closed_loop(1.0))
        load = Load(server.port, templates, args.baseline_connections, sequence=warm.sequence)
        cpu_before, own_before = server.cpu_seconds() or 0.0, time.process_time()
        started = time.monotonic()
        asyncio.run(load.closed_loop(args.baseline_duration))
        seconds = time.monotonic() - started
        server_cpu = (server.cpu_seconds() or 0.0) - cpu_before
        own_cpu = time.process_time() - own_before
    finally:
        server.stop()
    return {
        "events_per_s": round(load.acknowledged_events / seconds),
        "seconds": round(seconds, 2),
        "refused": load.refused,
        "errors": load.errors,
        "p50_ms": percentile(load.latencies_ms, 50),
        "p99_ms": percentile(load.latencies_ms, 99),
        "server_cpu_us_per_event": round(server_cpu * 1e6 / max(load.acknowledged_events, 1), 1),
        "server_cpu_cores": round(server_cpu / seconds, 2),
        "load_generator_cpu_cores": round(own_cpu / seconds, 2),
    }


def search(args: argparse.Namespace, folder: Path) -> tuple[int | None, list[dict[str, Any]]]:
    """Double the rate while steps pass, then bisect; returns the highest passing rate."""
    steps: list[dict[str, Any]] = []
    passed: int | None = None
    failed: int | None = None
    rate = args.start_rate
    while len(steps) < args.max_steps:
        log(f"step {len(steps) + 1}: {rate} events/s for {args.duration:g} s")
        step = run_step(args, folder, rate, len(steps) + 1)
        steps.append(step)
        log(
            f"  {'bounded' if step['bounded'] else 'NOT bounded ' + str(step['reasons'])}: "
            f"lag {step['lag_early_mean']} → {step['lag_late_mean']} (max {step['lag_max']}), "
            f"{step['acknowledged_events_per_s']} events/s acknowledged, "
            f"server {step['server_cpu_cores']} cores"
        )
        if step["bounded"]:
            passed = rate
        else:
            failed = rate
        if failed is None:
            if rate >= args.max_rate:
                break
            rate = min(rate * 2, args.max_rate)
        else:
            low = passed or 0
            if failed - low <= args.precision * max(low, EVENTS_PER_REQUEST):
                break
            rate = (low + failed) // 2 // EVENTS_PER_REQUEST * EVENTS_PER_REQUEST
            if rate <= low or rate < EVENTS_PER_REQUEST:
                break
    return passed, steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per step")
    parser.add_argument("--start-rate", type=int, default=10_000, help="events/s of step 1")
    parser.add_argument("--max-rate", type=int, default=320_000, help="events/s not to exceed")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--precision", type=float, default=0.1, help="stop bisecting within")
    parser.add_argument("--max-lag-s", type=float, default=5.0, help="lag ceiling, in seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--baseline-duration", type=float, default=10.0)
    parser.add_argument(
        "--baseline-connections", type=int, default=64, help="closed-loop connections"
    )
    parser.add_argument("--pool", type=int, default=50_000, help="distinct events cycled")
    parser.add_argument(
        "--lake-process",
        action="store_true",
        help="serve without its lake writer, and `personify lake sink` in a process of its own",
    )
    parser.add_argument(
        "--quick", action="store_true", help="15 s steps, at most 4, a 3 s baseline"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 15.0)
        args.max_steps = min(args.max_steps, 4)
        args.baseline_duration = min(args.baseline_duration, 3.0)
        args.pool = min(args.pool, 20_000)
    if args.start_rate < EVENTS_PER_REQUEST or args.duration < 6:
        parser.error("--start-rate at least 100 and --duration at least 6 s")
    from personify.settings import Settings

    args.batch = int(Settings.model_fields["worker_batch_size"].default)
    return args


def main(argv: list[str] | None = None) -> int:
    """Search for the sustained rate, measure the collector alone, print the JSON object."""
    args = parse_args(argv)
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    with ingest.scratch_folder(keep=False) as folder:
        log(f"collector alone (serve --no-worker), closed loop, {args.baseline_duration:g} s")
        baseline = collector_alone(args, folder)
        log(f"  {baseline['events_per_s']} events/s")
        sustained, steps = search(args, folder)
    rate = sustained or 0
    result = {
        "benchmark": "sustained",
        "date": started.isoformat(timespec="seconds"),
        "what": "personify serve (embedded, in-process worker): highest POST /v1/batch rate "
        "at which the worker's lag stays bounded",
        "sustained_events_per_s": sustained,
        "baseline_collector": baseline,
        "ratio_to_collector": round(rate / baseline["events_per_s"], 3)
        if baseline["events_per_s"]
        else None,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": rate >= TARGET_EVENTS_PER_S,
        "steps": steps,
        "setup": {
            "lake_writer": "personify lake sink, a process of its own"
            if args.lake_process
            else "inside serve",
            "duration_s": args.duration,
            "connections": args.connections,
            "baseline_connections": args.baseline_connections,
            "events_per_request": EVENTS_PER_REQUEST,
            "distinct_events_cycled": args.pool,
            "worker_batch_size": args.batch,
            "bounded": "late-window mean lag ≤ early-window mean lag + one batch, lag never over "
            "max(3 batches, rate * max_lag_s), ≥ 99 % of scheduled events acknowledged, none "
            "refused",
            "max_lag_s": args.max_lag_s,
            "warmup_s": min(10.0, args.duration / 6),
            "window_s": min(5.0, args.duration / 6),
            "search": f"from {args.start_rate} events/s doubling, then bisecting to within "
            f"{args.precision:.0%}, at most {args.max_steps} steps",
            "server": "personify serve, embedded: SQLite log (durability full) and state, "
            "in-process worker, a fresh data folder per step",
            "sharing": "server and load generator share every CPU (no pinning)",
            "cpu_count": os.cpu_count(),
            "cpu_model": ingest.cpu_model(),
            "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
