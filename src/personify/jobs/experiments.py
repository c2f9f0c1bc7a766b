"""The experiments' job ``personify serve`` schedules: every running bandit's allocation
recomputed from its decisions' rewards in the lake (``personify.experiments.service``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.experiments.service import ExperimentService
from personify.jobs.schedule import PeriodicJob
from personify.settings import Settings

__all__ = ["BANDIT_JOB", "experiment_jobs"]

BANDIT_JOB = "experiments-bandits"


def experiment_jobs(settings: Settings, service: ExperimentService) -> list[PeriodicJob]:
    """Bandits updated every ``experiments_bandit_interval_s`` where the lake is written
    (``run_lake_sink``): the process that writes the lake reads it."""

    async def run_update() -> dict[str, Any]:
        updated = await asyncio.to_thread(service.update_bandits)
        return {"bandits": len(updated), "decisions": sum(u["decisions"] for u in updated)}

    if not settings.run_lake_sink:
        return []
    return [
        PeriodicJob(
            BANDIT_JOB,
            run_update,
            settings.experiments_bandit_interval_s,
            first_delay_s=settings.experiments_bandit_interval_s,
        )
    ]
