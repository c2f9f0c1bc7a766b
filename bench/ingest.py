"""Ingest benchmark: how fast the collector durably takes events, against a bare-ASGI baseline.

Run it with ``make bench`` or ``.venv/bin/python bench/ingest.py [--quick] [--duration S]
[--connections N] [--rounds R] [--workers N]``. It prints ONE JSON object on stdout (progress goes to
stderr) with, all measured on this machine in this run:

* ``baseline`` — ``bench/bare_app.py``, a raw ASGI callable that drains the body and answers
  ``{"success":true}``, served by uvicorn with the options ``personify serve`` uses (as many
  processes as ``--workers``, default one, ``--loop auto`` / ``--http auto`` so uvloop and httptools when installed, access
  log off) and hit with the very same ``/v1/track`` requests, so only the app differs;
* ``track`` — ``POST /v1/track``, one ~400-byte event per request, each with a distinct
  ``messageId``: events per second, p50/p99 latency, and the ratio to the baseline's request
  rate (target >= 0.5);
* ``batch`` — ``POST /v1/batch`` with 100 such events per request: events per second
  (target >= 100,000 durably appended) and p50/p99 latency per request;
* ``log_check`` — after the runs each Personify server is killed with SIGKILL (no shutdown
  flush) and the records in ``events.db`` are counted: the log must hold at least
  every event the server acknowledged with a 2xx (it may hold a few more: requests that
  were in flight when wrk stopped were appended but their answers never read);
* ``setup`` — durability, whether the compiled ingest path ran (``--python-only`` turns it
  off), linger, connections, wrk threads, duration, rounds, CPU pinning,
  CPU count and model, versions, load average before and after.

Every round also records ``server_cpu_us_per_event`` (CPU the server used, all threads of
its process and its children, per acknowledged event, read from /proc) and ``server_cpu_cores`` /
``wrk_cpu_cores``. When other work shares the machine the rates drop but the CPU cost per
event barely moves, so it is the figure to compare across runs and code changes.

Load comes from ``wrk`` (``apt-get install wrk``; ``make bench`` does it) driven by
``bench/wrk/ingest.lua``, which builds every request body itself so no ``messageId`` repeats.
wrk is closed-loop: each connection sends its next request when the previous answer arrives,
so the latencies are those of a saturated server, not of a fixed arrival rate.

Each scenario has its own server and data folder (so one scenario's log does not slow the
next); every log starts empty. Scenarios run interleaved, round after round (baseline, track, batch, baseline, ...),
so that noise from other work on a shared machine hits all three alike; the headline figures
are medians over the rounds and every round's figures are reported beside them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "ingest.lua"
BATCH_EVENTS = 100
TRACK_RATIO_TARGET = 0.5
BATCH_EVENTS_PER_S_TARGET = 100_000
RESULT_MARKER = "BENCH_RESULT "
WRK_TIMEOUT_S = 10
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9.eE+-]+,?\s*)+)\]")


def log(message: str) -> None:
    """Progress on stderr, so stdout stays one JSON object."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iso_ms(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z, as Segment's libraries send it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` run under ``taskset -c cpus`` when pinning is asked for."""
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def process_tree_cpu_seconds(root: int) -> float | None:
    """CPU time (user + system) of ``root`` and every descendant still alive, from /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the fields after the ")" that closes the command name: ppid is 4, utime/stime 14/15
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    if root not in cpu:
        return None
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(cpu[pid] for pid in tree)


@dataclass
class Server:
    """A uvicorn subprocess on a free port, logging to a file in its folder."""

    name: str
    argv: list[str]
    env: dict[str, str]
    folder: Path
    health_path: str
    cpus: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Where the server listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.folder / f"{self.name}-server.log"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until its health path answers 200."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                pinned([*self.argv, "--port", str(self.port)], self.cpus),
                env=self.env,
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                # its own process group, so that stop() reaches uvicorn's --workers children
                # and the event log's fsync helpers too
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + self.health_path, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} server did not become healthy:\n{self.log_tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` to the server's process group and wait for the server to go.

        A SIGKILLed uvicorn supervisor would otherwise leave its ``--workers`` children
        serving on the port (and holding the log open) after the benchmark.
        """
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        # the children may outlive the supervisor by a moment
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, every thread) of the server and its child processes
        (``--workers`` children, the event log's sync helper), from /proc."""
        if self.process is None:
            return None
        return process_tree_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Scenario:
    """One thing under load: a server, the path hit, and how many events each request carries."""

    name: str
    server: Server
    path: str
    mode: str
    events_per_request: int
    data_dir: Path | None = None
    auth: str = "Basic YmFzZWxpbmU6"
    acknowledged_events: int = 0
    unanswered_events_max: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)


class Wrk:
    """Runs ``wrk`` with the ingest Lua script and parses the result line it prints."""

    def __init__(self, *, connections: int, threads: int, cpus: str | None, verbose: bool) -> None:
        self.connections = connections
        self.threads = threads
        self.cpus = cpus
        self.verbose = verbose
        self._tag = 0
        now = datetime.now(UTC)
        # the client's clock: the event happened a second before the batch was sent
        self.timestamp = iso_ms(now - timedelta(seconds=1))
        self.sent_at = iso_ms(now)

    def run(self, scenario: Scenario, duration_s: float) -> dict[str, Any]:
        """One wrk run of ``duration_s`` against ``scenario``; returns the parsed figures."""
        self._tag += 1
        argv = pinned(
            [
                "wrk",
                f"-t{self.threads}",
                f"-c{self.connections}",
                f"-d{duration_s:g}s",
                f"--timeout={WRK_TIMEOUT_S}s",
                "--latency",
                "-s",
                str(WRK_SCRIPT),
                scenario.server.base_url + scenario.path,
                "--",
                scenario.mode,
                str(scenario.events_per_request),
                scenario.auth,
                str(self._tag),
                self.timestamp,
                self.sent_at,
            ],
            self.cpus,
        )
        server_cpu_before = scenario.server.cpu_seconds()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu_after = scenario.server.cpu_seconds()
        if self.verbose:
            print(done.stdout, file=sys.stderr)
        lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(
                f"wrk failed ({done.returncode}) on {scenario.name}:\n{done.stdout}\n{done.stderr}"
                f"\n{scenario.server.log_tail()}"
            )
        raw: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
        errors = raw["errors"]
        ok_requests = raw["requests"] - errors["status"]
        scenario.acknowledged_events += ok_requests * scenario.events_per_request
        # requests wrk built beyond those it got an answer for were in flight at the stop
        unanswered = raw["built"]["requests"] - raw["requests"]
        scenario.unanswered_events_max += unanswered * scenario.events_per_request
        seconds = raw["duration_us"] / 1e6
        wrk_cpu_s = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        server_cpu_s = (
            server_cpu_after - server_cpu_before
            if server_cpu_after is not None and server_cpu_before is not None
            else float("nan")
        )
        events = max(ok_requests * scenario.events_per_request, 1)
        return {
            "requests_per_s": round(raw["requests"] / seconds, 1),
            "events_per_s": round(ok_requests * scenario.events_per_request / seconds, 1),
            "p50_ms": raw["latency_us"]["p50"] / 1000,
            "p90_ms": raw["latency_us"]["p90"] / 1000,
            "p99_ms": raw["latency_us"]["p99"] / 1000,
            "p999_ms": raw["latency_us"]["p999"] / 1000,
            "max_ms": raw["latency_us"]["max"] / 1000,
            "requests": raw["requests"],
            "non_2xx": errors["status"],
            "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
            "duration_s": round(seconds, 3),
            "mean_body_bytes": round(raw["built"]["body_bytes"] / max(raw["built"]["requests"], 1)),
            # CPU cost barely moves when other work competes for the cores, unlike the rates
            "server_cpu_cores": round(server_cpu_s / seconds, 2),
            "server_cpu_us_per_event": round(server_cpu_s * 1e6 / events, 1),
            "wrk_cpu_cores": round(wrk_cpu_s / seconds, 2),
        }


def spread_pct(values: list[float]) -> float:
    """(max - min) / median, in percent: how much the rounds disagree."""
    middle = statistics.median(values)
    return round(100 * (max(values) - min(values)) / middle, 1) if middle else 0.0


def summarise(scenario: Scenario, rate_key: str) -> dict[str, Any]:
    """Headline figures (medians over the rounds), every round's figures, and their spread."""
    keys = (
        rate_key,
        "p50_ms",
        "p99_ms",
        "server_cpu_cores",
        "server_cpu_us_per_event",
        "wrk_cpu_cores",
    )
    per_round = {key: [r[key] for r in scenario.rounds] for key in keys}
    return {
        rate_key: round(statistics.median(per_round[rate_key]), 1),
        "p50_ms": round(statistics.median(per_round["p50_ms"]), 3),
        "p99_ms": round(statistics.median(per_round["p99_ms"]), 3),
        "rounds": per_round,
        "server_cpu_us_per_event": round(
            statistics.median(per_round["server_cpu_us_per_event"]), 1
        ),
        "spread_pct": {key: spread_pct(per_round[key]) for key in keys[:3]},
        "non_2xx": sum(r["non_2xx"] for r in scenario.rounds),
        "socket_errors": sum(sum(r["socket_errors"].values()) for r in scenario.rounds),
        "body_bytes": scenario.rounds[-1]["mean_body_bytes"],
    }


def to_json(value: Any) -> str:
    """Indented JSON, with lists of numbers kept on one line so the rounds read side by side."""
    text = json.dumps(value, indent=2)
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(n.rstrip(",") for n in m.group(1).split()) + "]", text
    )


def count_log(data_dir: Path) -> dict[str, int]:
    """Records in the event log and the transactions (chunks) that wrote them."""
    conn = sqlite3.connect(data_dir / "events.db")
    try:
        records, chunks = conn.execute(
            "SELECT coalesce(sum(count), 0), count(*) FROM chunk"
        ).fetchone()
    finally:
        conn.close()
    return {"log_rows": int(records), "chunks": int(chunks)}


def versions() -> dict[str, str]:
    """Versions of everything on the measured path."""
    found: dict[str, str] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in ("personify", "uvicorn", "starlette", "msgspec", "uvloop", "httptools"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    if shutil.which("wrk") is None:
        found["wrk"] = "not installed"
        return found
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    found["wrk"] = (done.stdout or done.stderr).splitlines()[0].strip()
    return found


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_linger_ms() -> float:
    """The event log's linger when PERSONIFY_EVENTLOG_LINGER_MS is not set."""
    from personify.settings import Settings

    return float(Settings.model_fields["eventlog_linger_ms"].default)


def personify_env(data_dir: Path, durability: str, linger_ms: float) -> dict[str, str]:
    """The environment of a Personify server or CLI call: its own data folder, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env.update(
        {
            "PERSONIFY_DATA_DIR": str(data_dir),
            "PERSONIFY_ENVIRONMENT": "test",
            "PERSONIFY_PII_HASH_KEY": "bench",
            "PERSONIFY_EVENTLOG_DURABILITY": durability,
            "PERSONIFY_EVENTLOG_LINGER_MS": str(linger_ms),
        }
    )
    return env


def create_source(env: dict[str, str], cwd: Path, name: str = "bench") -> str:
    """``personify sources create <name>``; returns the write key it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "personify.cli", "sources", "create", name],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"personify sources create failed:\n{done.stderr}")
    for line in done.stdout.splitlines():
        if line.startswith("write key:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no write key in {done.stdout!r}")


def basic_auth(write_key: str) -> str:
    """Segment's auth: the write key as Basic user name, empty password."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


@contextmanager
def scratch_folder(keep: bool) -> Iterator[Path]:
    """A temporary folder for data and server logs, removed afterwards unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix="personify-bench-ingest-"))
    try:
        yield folder
    finally:
        if keep:
            log(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def run_rounds(
    wrk: Wrk,
    scenarios: list[Scenario],
    args: argparse.Namespace,
    describe: Callable[[dict[str, Any]], str],
    stop_signal: Callable[[Scenario], signal.Signals],
) -> None:
    """Start every server, warm each up, run the measured rounds in turn, then stop them all.

    The rounds interleave the scenarios so a slow drift of the machine hits all of them alike.
    """
    try:
        for scenario in scenarios:
            scenario.server.start()
            log(f"{scenario.name} server on {scenario.server.base_url}")
        for scenario in scenarios:
            log(f"warm-up {scenario.name} ({args.warmup:g} s)")
            wrk.run(scenario, args.warmup)
        for number in range(1, args.rounds + 1):
            for scenario in scenarios:
                figures = wrk.run(scenario, args.duration)
                scenario.rounds.append(figures)
                log(f"round {number}/{args.rounds} {scenario.name}: {describe(figures)}")
    finally:
        for scenario in scenarios:
            scenario.server.stop(stop_signal(scenario))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn processes of every server, the baseline's included",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument(
        "--durability", choices=["full", "normal", "off"], default="full", help="event log"
    )
    parser.add_argument(
        "--linger-ms", type=float, default=None, help="event log group-commit linger"
    )
    parser.add_argument(
        "--pin",
        choices=["none", "split"],
        default="none",
        help="split: servers on CPU 0, wrk on the last CPU (taskset)",
    )
    parser.add_argument(
        "--python-only",
        action="store_true",
        help="PERSONIFY_INGEST_NATIVE=false: ingest without the compiled common case",
    )
    parser.add_argument("--quick", action="store_true", help="one 3 s round, 1 s warm-up")
    parser.add_argument("--keep-data", action="store_true", help="keep the data folder")
    parser.add_argument("--verbose", action="store_true", help="echo wrk's output to stderr")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 3.0, 1, 1.0
    return args


def native_ingest_built() -> bool:
    """Whether the compiled common case of ingest (``ingest/_wire_native.c``) was built."""
    from personify.ingest.wire import NATIVE_AVAILABLE

    return NATIVE_AVAILABLE


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed: `apt-get install wrk` (or run `make bench`)")
        return 2
    cpu_count = os.cpu_count() or 1
    if args.pin == "split" and (cpu_count < 2 or shutil.which("taskset") is None):
        log("--pin split needs taskset and at least two CPUs")
        return 2
    server_cpus = "0" if args.pin == "split" else None
    wrk_cpus = str(cpu_count - 1) if args.pin == "split" else None
    linger_ms = args.linger_ms if args.linger_ms is not None else default_linger_ms()
    load_before = os.getloadavg()
    started = datetime.now(UTC)

    with scratch_folder(args.keep_data) as folder:
        baseline = Scenario(
            "baseline",
            Server(
                "baseline",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bare_app:app",
                    "--app-dir",
                    str(BENCH_DIR),
                    "--host",
                    "127.0.0.1",
                    "--workers",
                    str(args.workers),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")},
                folder,
                "/",
                server_cpus,
            ),
            "/v1/track",
            "track",
            1,
        )
        scenarios = [baseline]
        for name, path, mode, per_request in (
            ("track", "/v1/track", "track", 1),
            ("batch", "/v1/batch", "batch", BATCH_EVENTS),
        ):
            data_dir = folder / f"{name}-data"
            data_dir.mkdir()
            env = personify_env(data_dir, args.durability, linger_ms)
            env["PERSONIFY_INGEST_NATIVE"] = "false" if args.python_only else "true"
            write_key = create_source(env, folder)
            server = Server(
                name,
                [
                    sys.executable,
                    "-m",
                    "personify.cli",
                    "serve",
                    "--no-worker",
                    "--workers",
                    str(args.workers),
                    "--log-level",
                    "warning",
                ],
                env,
                folder,
                "/healthz",
                server_cpus,
            )
            scenarios.append(
                Scenario(name, server, path, mode, per_request, data_dir, basic_auth(write_key))
            )

        wrk = Wrk(
            connections=args.connections, threads=args.threads, cpus=wrk_cpus, verbose=args.verbose
        )
        run_rounds(
            wrk,
            scenarios,
            args,
            lambda figures: (
                f"{figures['requests_per_s']:.0f} req/s, "
                f"{figures['events_per_s']:.0f} events/s, "
                f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
            ),
            # SIGKILL the Personify servers: what is acknowledged must be in the log
            # without any help from a clean shutdown
            lambda scenario: signal.SIGTERM if scenario is baseline else signal.SIGKILL,
        )

        log_check: dict[str, Any] = {}
        for scenario in scenarios[1:]:
            assert scenario.data_dir is not None
            counted = count_log(scenario.data_dir)
            log_check[scenario.name] = {
                "acknowledged_events": scenario.acknowledged_events,
                **counted,
                "unacknowledged_in_log": counted["log_rows"] - scenario.acknowledged_events,
                "in_flight_at_stop_max": scenario.unanswered_events_max,
                "ok": scenario.acknowledged_events
                <= counted["log_rows"]
                <= scenario.acknowledged_events + scenario.unanswered_events_max,
            }

    track, batch = scenarios[1], scenarios[2]
    base_summary = summarise(baseline, "requests_per_s")
    track_summary = summarise(track, "events_per_s")
    batch_summary = summarise(batch, "events_per_s")
    ratios = [
        round(t["events_per_s"] / b["requests_per_s"], 3)
        for t, b in zip(track.rounds, baseline.rounds, strict=True)
    ]
    ratio = track_summary["events_per_s"] / base_summary["requests_per_s"]
    track_summary["rounds"]["ratio_to_baseline"] = ratios
    track_summary["spread_pct"]["ratio_to_baseline"] = spread_pct(ratios)
    result = {
        "benchmark": "ingest",
        "date": started.isoformat(timespec="seconds"),
        "baseline": {"what": "bench/bare_app.py, same server, requests and wrk", **base_summary},
        "track": {
            "ratio_to_baseline": round(ratio, 3),
            "ratio_target": TRACK_RATIO_TARGET,
            "meets_target": ratio >= TRACK_RATIO_TARGET,
            **track_summary,
        },
        "batch": {
            "events_per_request": BATCH_EVENTS,
            "events_per_s_target": BATCH_EVENTS_PER_S_TARGET,
            "meets_target": batch_summary["events_per_s"] >= BATCH_EVENTS_PER_S_TARGET,
            "requests_per_s": round(
                statistics.median(r["requests_per_s"] for r in batch.rounds), 1
            ),
            **batch_summary,
        },
        "log_check": log_check,
        "setup": {
            "durability": args.durability,
            "ingest_native": not args.python_only and native_ingest_built(),
            "linger_ms": linger_ms,
            "connections": args.connections,
            "workers": args.workers,
            "wrk_threads": args.threads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "pinning": (
                f"servers on CPU {server_cpus}, wrk on CPU {wrk_cpus} (taskset)"
                if args.pin == "split"
                else "none: the OS schedules servers and wrk over every CPU"
            ),
            "server": (
                f"uvicorn, {args.workers} process(es), access log off, "
                f"loop {'uvloop' if find_spec('uvloop') else 'asyncio'}, "
                f"http {'httptools' if find_spec('httptools') else 'h11'}; "
                "personify serve --no-worker"
            ),
            "latency": "wrk closed loop: latencies at saturation, per request",
            "cpu_count": cpu_count,
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "versions": versions(),
        },
    }
    print(to_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
