"""The prediction jobs ``personify serve`` schedules: rescoring stored profiles whose
predictions are missing, stale or from another version (``personify.predict.rescore``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.jobs.schedule import PeriodicJob
from personify.predict.rescore import PredictionRescore
from personify.segments.relay import MembershipRelay
from personify.settings import Settings

__all__ = ["RESCORE_JOB", "prediction_jobs"]

RESCORE_JOB = "prediction-rescore"


def prediction_jobs(
    settings: Settings, rescore: PredictionRescore, relay: MembershipRelay
) -> list[PeriodicJob]:
    """A rescoring pass every ``predict_rescore_interval_s`` (the membership events of rules
    that read predictions relayed at once)."""

    async def run_rescore() -> dict[str, Any]:
        result = (await asyncio.to_thread(rescore.run)).to_dict()
        result["eventsAppended"] = await relay.flush()
        return result

    return [
        PeriodicJob(
            RESCORE_JOB,
            run_rescore,
            settings.predict_rescore_interval_s,
            first_delay_s=settings.predict_rescore_interval_s,
        )
    ]
