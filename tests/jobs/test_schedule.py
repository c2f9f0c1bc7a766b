"""The in-process scheduler, and the retention jobs it runs inside ``personify serve``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from personify.errors import BackendUnavailable
from personify.jobs.schedule import PeriodicJob, Scheduler
from personify.profiles.tables import applied_events
from tests.lake.conftest import serving


async def _until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_failing_job_is_counted_and_runs_again_beside_the_others() -> None:
    calls: list[str] = []

    async def flaky() -> dict[str, Any]:
        calls.append("flaky")
        if len(calls) % 2:
            raise BackendUnavailable("the engine is away", code="log_unavailable")
        return {"ok": len(calls)}

    async def steady() -> dict[str, Any]:
        return {"ok": True}

    jobs = [PeriodicJob("flaky", flaky, 0.01), PeriodicJob("steady", steady, 0.01)]
    scheduler = Scheduler(jobs)
    scheduler.start()
    try:
        await _until(lambda: scheduler.statuses["flaky"].runs >= 4, "four runs of the flaky job")
        await _until(lambda: scheduler.statuses["steady"].runs >= 4, "four runs of the other")
    finally:
        await scheduler.stop()
    assert not scheduler.running
    flaky_status = scheduler.statuses["flaky"]
    assert flaky_status.failures == (flaky_status.runs + 1) // 2
    body = flaky_status.to_dict()
    assert body["runs"] == flaky_status.runs
    if body["lastError"] is not None:
        assert body["lastError"]["code"] == "log_unavailable"
    assert scheduler.statuses["steady"].failures == 0
    runs = flaky_status.runs
    await asyncio.sleep(0.05)
    assert flaky_status.runs == runs  # stopped means stopped


async def test_serve_prunes_profiles_and_trims_the_log_on_its_schedule(tmp_path: Path) -> None:
    async with serving(
        tmp_path / "data",
        profile_prune_interval_s=0.05,
        eventlog_trim_interval_s=0.05,
        profile_timeline_retention_days=0.0,
        eventlog_retention_hours=0.0,
    ) as served:
        scheduler = served.services.scheduler
        assert scheduler is not None and scheduler.running
        events = [
            {"type": "track", "event": "Viewed", "userId": "kim", "messageId": f"k{n}"}
            for n in range(5)
        ]
        response = await served.client.post(
            "/v1/batch", json={"batch": events}, auth=(served.write_key, "")
        )
        assert response.status_code == 200, response.text
        await served.settled()
        db = served.services.db

        def timeline_rows() -> int:
            with db.connect() as conn:
                return int(
                    conn.execute(
                        sa.select(sa.func.count()).select_from(applied_events)
                    ).scalar_one()
                )

        await _until(lambda: timeline_rows() == 0, "the prune job to empty the timeline")
        prune = scheduler.statuses["profile-prune"]
        assert prune.failures == 0
        trim = scheduler.statuses["eventlog-trim"]

        async def log_empty() -> bool:
            return await served.services.log.tail(10) == []

        deadline = time.monotonic() + 20
        while not await log_empty():
            assert time.monotonic() < deadline, "the trim job never emptied the log"
            await asyncio.sleep(0.02)
        assert trim.failures == 0 and trim.runs >= 1
        # operators see the jobs beside the worker
        status = await served.client.get("/v1/worker/status")
        assert status.status_code == 200, status.text
        jobs = {job["job"]: job for job in status.json()["jobs"]}
        assert set(jobs) == {
            "profile-prune",
            "eventlog-trim",
            "segment-sweep",
            "segment-relay",
            "segment-backfill",
            "segment-rfm",
            "segment-recluster",
            "prediction-rescore",
            "prediction-monitor",
            "content-webhooks",
            "content-exposure-prune",
            "recommend-train",
            "experiments-bandits",
            "privacy-requests",
        }
        assert jobs["profile-prune"]["runs"] >= 1 and jobs["profile-prune"]["failures"] == 0
        assert jobs["profile-prune"]["lastResult"]["eventsDeleted"] >= 0
        # the profile is still whole, and its timeline comes from the lake now
        answer = await served.client.get("/v1/profiles/kim/events")
        assert answer.status_code == 200, answer.text
        assert sorted(e["messageId"] for e in answer.json()["data"]) == [f"k{n}" for n in range(5)]
    assert not scheduler.running
