"""SIGKILL the lake writer mid-stream, again and again: the lake still holds each event once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from personify.lake.table import Lake
from tests.lake.conftest import cli_env, fill_log, normalized, track

PERSONIFY = [sys.executable, "-m", "personify.cli"]
EVENTS = 10_000
KILLS = 4


def _version(lake: Lake) -> int:
    return -1 if not lake.exists() else int(lake.open().version())


@pytest.mark.e2e
async def test_sigkill_during_writes_leaves_each_event_in_the_lake_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    now = datetime.now(UTC)
    events = [
        normalized(
            track(i, at=now - timedelta(days=i % 20, minutes=i)),
            received_at=now,
        )
        for i in range(EVENTS)
    ]
    await fill_log(data / "events.db", events)
    env = cli_env(
        data,
        PERSONIFY_LAKE_BATCH_MAX_EVENTS="100",
        PERSONIFY_LAKE_LINGER_MS="0",
    )
    lake = Lake(str(data / "lake"))
    rng = random.Random(5)
    kills = 0
    for _ in range(KILLS):
        before = _version(lake)
        with (tmp_path / "sink.log").open("ab") as output:
            process = subprocess.Popen(
                [*PERSONIFY, "lake", "sink"], env=env, stdout=output, stderr=output
            )
        try:
            deadline = time.monotonic() + 60
            # kill only once this life has committed something, so every kill lands mid-stream
            while _version(lake) <= before + 1 and time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "sink.log").read_text()
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))
            process.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            process.wait(timeout=10)
    assert kills == KILLS
    written_before_drain = lake.open().count()
    assert 0 < written_before_drain < EVENTS, "the kills should land while writing"

    done = subprocess.run(
        [*PERSONIFY, "lake", "sink", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    table = lake.open().to_pyarrow_table(columns=["message_id"])
    ids = table.column("message_id").to_pylist()
    assert len(ids) == EVENTS
    assert len(set(ids)) == EVENTS
    assert set(ids) == {e["messageId"] for e in events}
