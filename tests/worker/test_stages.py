"""Background stages that die are logged once, reported, and restarted with backoff."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from personify.eventlog.base import LogRecord
from personify.worker.supervisor import StageSupervisor
from tests.lake.conftest import serving


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_dying_stage_is_logged_once_per_failure_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []

    async def stage(stop: asyncio.Event) -> None:
        runs.append(time.monotonic())
        if len(runs) == 5:
            await asyncio.sleep(0.15)  # longer than healthy_after_s: the backoff starts over
        if len(runs) <= 5:
            raise RuntimeError(f"failure {len(runs)}")
        await stop.wait()

    supervisor = StageSupervisor(
        "demo", stage, min_backoff_s=0.02, max_backoff_s=0.08, healthy_after_s=0.1
    )
    caplog.set_level(logging.ERROR, logger="personify.stages")
    supervisor.start()
    await _until(lambda: len(runs) == 6 and supervisor.status.state == "running")

    records = [r for r in caplog.records if r.name == "personify.stages"]
    assert [r.args[-1] for r in records] == [0.02, 0.04, 0.08, 0.08, 0.02]
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in records)
    assert "failure 3" in records[2].getMessage()
    # each wait was at least the backoff it announced
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert all(gap >= 0.018 for gap in gaps)
    status = supervisor.status.to_dict()
    assert status["state"] == "running"
    assert status["restarts"] == 5
    assert status["lastError"] == {"code": "stage_failed", "message": "RuntimeError: failure 5"}
    assert status["lastFailureAt"] is not None
    await supervisor.stop()
    assert supervisor.status.state == "stopped"
    assert not supervisor.running


async def test_stopping_a_stage_that_waits_to_restart_is_immediate() -> None:
    async def stage(stop: asyncio.Event) -> None:
        raise RuntimeError("always")

    supervisor = StageSupervisor("demo", stage, min_backoff_s=60.0)
    supervisor.start()
    await _until(lambda: supervisor.status.state == "restarting")
    assert supervisor.status.is_down
    assert supervisor.status.summary()["state"] == "restarting"
    began = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - began < 5
    assert supervisor.status.state == "stopped"
    assert supervisor.status.restarts == 0


async def test_a_stage_that_returns_unasked_is_restarted() -> None:
    runs: list[int] = []

    async def stage(stop: asyncio.Event) -> None:
        runs.append(1)
        if len(runs) > 1:
            await stop.wait()

    supervisor = StageSupervisor("demo", stage, min_backoff_s=0.01)
    supervisor.start()
    await _until(lambda: len(runs) == 2)
    assert supervisor.status.last_error_code == "stage_exited"
    await supervisor.stop()


# -- the stream worker inside the served app -------------------------------------------------

_FAIL_DEAD_LETTERS = sa.text(
    "CREATE TRIGGER injected_failure BEFORE INSERT ON failed_events "
    "BEGIN SELECT RAISE(ABORT, 'injected: dead letters cannot be stored'); END"
)


async def test_a_worker_that_dies_is_reported_restarted_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # the lake writer would record the same dead letter and die too: this test is the worker's
    async with serving(tmp_path / "data", run_lake_sink=False) as served:
        assert (await served.ready())[0] == 200
        # a database failure that is no outage (a constraint): storing a dead letter fails
        with served.services.db.engine.begin() as conn:
            conn.execute(_FAIL_DEAD_LETTERS)
        await served.services.log.append([LogRecord(b"{not json", "raw")])
        batch = [
            {"type": "track", "userId": "cy", "event": "Clicked", "messageId": f"e{i}"}
            for i in range(3)
        ]
        assert (await served.send("/v1/batch", {"batch": batch})).status_code == 200

        body = await served.down()
        assert body["error"]["code"] == "stage_down"
        assert "worker" in body["error"]["message"]
        assert (await served.client.get("/healthz")).status_code == 200
        worker = (await served.stages())["worker"]
        assert worker["lastError"]["code"] == "stage_failed"
        assert worker["lastError"]["message"].startswith("IntegrityError")
        assert worker["lastFailureAt"] is not None
        assert (await served.client.get("/v1/log")).json()["lag"] == 4

        with served.services.db.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER injected_failure"))

        async def recovered() -> bool:
            stage = (await served.stages())["worker"]
            return stage["state"] == "running" and stage["restarts"] >= 1

        await served.wait_for(recovered, "the worker to be restarted")
        await served.settled()
        # what the dead run had read was applied by the next one: nothing skipped
        profile = (await served.client.get("/v1/profiles/cy")).json()
        assert profile["features"]["event_counts"]["Clicked"]["all"] == 3
        [letter] = served.services.failed_events.list(stage="worker")
        assert letter.code == "undecodable"
        assert (await served.ready())[0] == 200

        later = {"userId": "cy", "event": "Clicked", "messageId": "later"}
        assert (await served.send("/v1/track", later)).status_code == 200
        await served.settled()
        profile = (await served.client.get("/v1/profiles/cy")).json()
        assert profile["features"]["event_counts"]["Clicked"]["all"] == 4
