"""The content jobs ``personify serve`` schedules: sending the webhook deliveries that are due
(``personify.content.webhooks``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.content.webhooks import WebhookDeliverer
from personify.jobs.schedule import PeriodicJob
from personify.settings import Settings

__all__ = ["WEBHOOK_JOB", "content_jobs"]

# the job that sends webhook deliveries (a publish may trigger it, so they go out at once)
WEBHOOK_JOB = "content-webhooks"


def content_jobs(settings: Settings, deliverer: WebhookDeliverer) -> list[PeriodicJob]:
    """The due webhook deliveries sent every ``content_webhook_interval_s``; the HTTP calls
    run in a thread, so a slow receiver never holds the event loop."""

    async def run_webhooks() -> dict[str, Any]:
        return await asyncio.to_thread(deliverer.deliver_due)

    return [
        PeriodicJob(
            WEBHOOK_JOB,
            run_webhooks,
            settings.content_webhook_interval_s,
            first_delay_s=settings.content_webhook_interval_s,
        )
    ]
