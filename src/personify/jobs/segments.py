"""The segment jobs ``personify serve`` schedules: the window sweep, the outbox relay, the
backfill of rules saved since the last pass, RFM runs, and clustering runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from personify.jobs.schedule import PeriodicJob
from personify.segments.backfill import SegmentBackfill
from personify.segments.clusterings import ClusteringRunner
from personify.segments.relay import MembershipRelay
from personify.segments.rfm_runner import RfmRunResult
from personify.segments.sweep import SegmentSweep
from personify.settings import Settings

__all__ = ["RECLUSTER_JOB", "clustering_jobs", "rfm_jobs", "segment_jobs"]

# the job that carries out clustering runs (the API wakes it when it queues one)
RECLUSTER_JOB = "segment-recluster"


def segment_jobs(
    settings: Settings, sweep: SegmentSweep, relay: MembershipRelay, backfill: SegmentBackfill
) -> list[PeriodicJob]:
    """The sweep every ``segment_sweep_interval_s`` (its events relayed at once), the relay
    of whatever the outbox still holds every ``segment_relay_interval_s``, and a backfill
    pass when one waits, looked for every ``segment_backfill_interval_s``."""

    async def run_sweep() -> dict[str, Any]:
        result = (await asyncio.to_thread(sweep.sweep)).to_dict()
        result["eventsAppended"] = await relay.flush()
        return result

    async def run_relay() -> dict[str, Any]:
        return {"eventsAppended": await relay.flush()}

    async def run_backfill() -> dict[str, Any]:
        result = (await asyncio.to_thread(backfill.run)).to_dict()
        result["eventsAppended"] = await relay.flush()
        return result

    return [
        PeriodicJob(
            "segment-sweep",
            run_sweep,
            settings.segment_sweep_interval_s,
            first_delay_s=settings.segment_sweep_interval_s,
        ),
        PeriodicJob(
            "segment-relay",
            run_relay,
            settings.segment_relay_interval_s,
            first_delay_s=settings.segment_relay_interval_s,
        ),
        PeriodicJob(
            "segment-backfill",
            run_backfill,
            settings.segment_backfill_interval_s,
            first_delay_s=settings.segment_backfill_interval_s,
        ),
    ]


def rfm_jobs(settings: Settings, run: Callable[[], RfmRunResult]) -> list[PeriodicJob]:
    """An RFM run over the lake every ``segment_rfm_interval_s`` (a day), where the lake is
    written (``run_lake_sink``)."""
    if not settings.run_lake_sink:
        return []

    async def run_rfm() -> dict[str, Any]:
        return (await asyncio.to_thread(run)).to_dict()

    return [
        PeriodicJob(
            "segment-rfm",
            run_rfm,
            settings.segment_rfm_interval_s,
            first_delay_s=settings.segment_rfm_interval_s,
        )
    ]


def clustering_jobs(
    settings: Settings, runner: ClusteringRunner, relay: MembershipRelay
) -> list[PeriodicJob]:
    """Every ``segment_recluster_interval_s``: queue the scheduled clustering runs that are
    due, carry out every queued run (``POST /v1/clusterings/{key}/runs`` queues one), and
    relay their membership events; where the lake is written (``run_lake_sink``)."""
    if not settings.run_lake_sink:
        return []

    async def run_clusterings() -> dict[str, Any]:
        outcomes = await asyncio.to_thread(runner.run_pending)
        return {
            "runs": [o.to_dict() for o in outcomes],
            "eventsAppended": await relay.flush(),
        }

    return [
        PeriodicJob(
            RECLUSTER_JOB,
            run_clusterings,
            settings.segment_recluster_interval_s,
            first_delay_s=settings.segment_recluster_interval_s,
        )
    ]
