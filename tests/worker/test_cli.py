"""``personify worker``, ``personify profiles show`` and ``personify events replay-failed``."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from tests.conftest import make_settings
from tests.e2e.conftest import PERSONIFY, cli, server_env
from tests.profiles.factory import encode, event


def fill(data_dir: Path, payloads: list[bytes]) -> None:
    async def run() -> None:
        log = SQLiteEventLog.from_url(
            f"sqlite:///{data_dir / 'events.db'}", make_settings(data_dir)
        )
        await log.start()
        await log.append([LogRecord(p, "k") for p in payloads])
        await log.close()

    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run())


def test_worker_profiles_show_and_replay_failed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = server_env(data_dir)
    fill(
        data_dir,
        [
            encode(event("page", "p1", 0, anonymous_id="anon-9")),
            encode(event("identify", "i1", 1, anonymous_id="anon-9", user_id="max")),
            b"not json at all",
        ],
    )
    output = cli(env, "worker", "--drain")
    assert "2 applied" in output and "1 dead-lettered" in output and "lag 0" in output

    profile = json.loads(cli(env, "profiles", "show", "anon-9"))
    assert profile["profileId"] == "max"
    assert profile["features"]["events_total"] == 2
    past = json.loads(cli(env, "profiles", "show", "max", "--as-of", "2999-01-01T00:00:00Z"))
    assert past["features"]["events_total"] == 2

    missing = subprocess.run(
        [*PERSONIFY, "profiles", "show", "nobody"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "profile_not_found" in missing.stderr

    assert "replayed 1 dead letters: [1]" in cli(env, "events", "replay-failed")
    assert "replayed 0" in cli(env, "events", "replay-failed")
    # the replayed bytes are still not JSON: dead-lettered again, with a new id
    assert "1 dead-lettered" in cli(env, "worker", "--drain")
