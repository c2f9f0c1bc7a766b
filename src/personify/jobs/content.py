"""The content jobs ``personify serve`` schedules: sending the webhook deliveries that are due
(``personify.content.webhooks``), and pruning exposures older than the longest frequency-cap
window (``personify.content.exposures``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.clock import Clock, SystemClock
from personify.content.exposures import prune_exposures
from personify.content.webhooks import WebhookDeliverer
from personify.jobs.schedule import PeriodicJob
from personify.settings import Settings
from personify.store.database import Database

__all__ = ["EXPOSURE_PRUNE_JOB", "WEBHOOK_JOB", "content_jobs"]

# exposures older than the longest cap window are dropped once an hour
EXPOSURE_PRUNE_JOB = "content-exposure-prune"
_PRUNE_INTERVAL_S = 3600.0

# the job that sends webhook deliveries (a publish may trigger it, so they go out at once)
WEBHOOK_JOB = "content-webhooks"


def content_jobs(
    settings: Settings,
    deliverer: WebhookDeliverer,
    db: Database | None = None,
    clock: Clock | None = None,
) -> list[PeriodicJob]:
    """The due webhook deliveries sent every ``content_webhook_interval_s``; the HTTP calls
    run in a thread, so a slow receiver never holds the event loop. With ``db``, also the
    hourly pruning of old exposures."""
    clock = clock or SystemClock()

    async def run_webhooks() -> dict[str, Any]:
        return await asyncio.to_thread(deliverer.deliver_due)

    async def run_prune() -> dict[str, Any]:
        assert db is not None
        deleted = await asyncio.to_thread(prune_exposures, db, clock.now())
        return {"exposuresDeleted": deleted}

    jobs = [
        PeriodicJob(
            WEBHOOK_JOB,
            run_webhooks,
            settings.content_webhook_interval_s,
            first_delay_s=settings.content_webhook_interval_s,
        )
    ]
    if db is not None:
        jobs.append(PeriodicJob(EXPOSURE_PRUNE_JOB, run_prune, _PRUNE_INTERVAL_S))
    return jobs
