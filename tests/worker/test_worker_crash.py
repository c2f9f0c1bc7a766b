"""SIGKILL the worker process mid-stream, again and again: the profiles come out identical.

The log is filled first; one data folder is processed by a single clean run, a copy of it
by a worker that is killed four times at random points (after it has committed some
progress, so each kill lands mid-stream) and then drained by a last run.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.normalize import partition_key
from tests.conftest import make_settings
from tests.e2e.conftest import PERSONIFY, server_env
from tests.profiles.factory import encode, shop_events

pytestmark = pytest.mark.e2e

EVENTS = shop_events(120, 60, seed=11)


def fill_log(data_dir: Path) -> None:
    async def run() -> None:
        settings = make_settings(data_dir)
        log = SQLiteEventLog.from_url(f"sqlite:///{data_dir / 'events.db'}", settings)
        await log.start()
        await log.append([LogRecord(encode(e), partition_key(e)) for e in EVENTS])
        await log.close()

    data_dir.mkdir(parents=True)
    asyncio.run(run())


def committed(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "events.db", timeout=10) as conn:
        row = conn.execute("SELECT committed FROM consumer_groups WHERE name = 'worker'").fetchone()
    return int(row[0]) if row else 0


def worker(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    env = server_env(data_dir, PERSONIFY_WORKER_BATCH_SIZE="40")
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115
    process = subprocess.Popen([*PERSONIFY, "worker", *args], env=env, stdout=log, stderr=log)
    log.close()
    return process


def drain(data_dir: Path) -> None:
    process = worker(data_dir, "--drain")
    assert process.wait(timeout=120) == 0, (data_dir / "worker.log").read_text()


def dump(data_dir: Path) -> dict[str, object]:
    with sqlite3.connect(data_dir / "personify.db") as conn:
        return {
            "profiles": dict(conn.execute("SELECT profile_id, state FROM profiles")),
            "identities": dict(conn.execute("SELECT identity, profile_id FROM identities")),
            "timeline": dict(conn.execute("SELECT event_key, profile_id FROM applied_events")),
            "dead_letters": conn.execute("SELECT count(*) FROM failed_events").fetchone()[0],
        }


def test_sigkill_mid_stream_then_restart_gives_the_profiles_of_one_clean_run(
    tmp_path: Path,
) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    fill_log(clean)
    shutil.copytree(clean, crashed)
    drain(clean)

    rng = random.Random(3)
    kills = 0
    progress = 0
    for _ in range(4):
        process = worker(crashed)
        deadline = time.monotonic() + 60
        while committed(crashed) <= progress and time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError((crashed / "worker.log").read_text())
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
        progress = committed(crashed)
        if progress >= len(EVENTS):
            break
    assert kills >= 2 and progress < len(EVENTS), "the kills did not land mid-stream"
    drain(crashed)

    expected = dump(clean)
    assert len(expected["profiles"]) > 100  # type: ignore[arg-type]
    assert len(expected["timeline"]) == len(EVENTS)  # type: ignore[arg-type]
    assert expected["dead_letters"] == 0
    assert dump(crashed) == expected
