"""The prediction jobs ``personify serve`` schedules: rescoring stored profiles whose
predictions are missing, stale or from another version (``personify.predict.rescore``), and
the daily check of the served models with the retraining it calls for
(``personify.predict.monitor``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.clock import Clock
from personify.jobs.schedule import PeriodicJob
from personify.predict.monitor import ModelMonitor, retraining_due
from personify.predict.rescore import PredictionRescore
from personify.predict.trainer import ModelTrainer
from personify.segments.relay import MembershipRelay
from personify.settings import Settings

__all__ = ["MONITOR_JOB", "RESCORE_JOB", "monitor_and_retrain", "prediction_jobs"]

RESCORE_JOB = "prediction-rescore"
MONITOR_JOB = "prediction-monitor"


def monitor_and_retrain(
    settings: Settings, monitor: ModelMonitor, trainer: ModelTrainer, clock: Clock
) -> dict[str, Any]:
    """Check every served model, then retrain the targets that are due (drift or schedule)
    through the promotion gate."""
    checks = monitor.check()
    retrained = []
    registry = trainer.registry
    assert registry is not None
    for version, reason in retraining_due(
        registry, checks, interval_s=settings.predict_retrain_interval_s, now=clock.now()
    ):
        run = trainer.train(version.target)
        retrained.append(
            {
                "target": version.target.key,
                "reason": reason,
                "version": run.version.number if run.version is not None else None,
                "promoted": run.promoted,
                "gate": run.report["gate"]["decision"],
            }
        )
    return {
        "checks": [
            {"target": c["target"], "version": c["version"], "alerts": len(c["alerts"])}
            for c in checks
        ],
        "retrained": retrained,
    }


def prediction_jobs(
    settings: Settings,
    rescore: PredictionRescore,
    relay: MembershipRelay,
    monitor: ModelMonitor,
    trainer: ModelTrainer,
    clock: Clock,
) -> list[PeriodicJob]:
    """A rescoring pass every ``predict_rescore_interval_s`` (the membership events of rules
    that read predictions relayed at once); a check of the served models, and retraining,
    every ``predict_monitor_interval_s`` where the lake is written (``run_lake_sink``)."""

    async def run_monitor() -> dict[str, Any]:
        return await asyncio.to_thread(monitor_and_retrain, settings, monitor, trainer, clock)

    async def run_rescore() -> dict[str, Any]:
        result = (await asyncio.to_thread(rescore.run)).to_dict()
        result["eventsAppended"] = await relay.flush()
        return result

    jobs = [
        PeriodicJob(
            RESCORE_JOB,
            run_rescore,
            settings.predict_rescore_interval_s,
            first_delay_s=settings.predict_rescore_interval_s,
        )
    ]
    if settings.run_lake_sink:
        jobs.append(
            PeriodicJob(
                MONITOR_JOB,
                run_monitor,
                settings.predict_monitor_interval_s,
                first_delay_s=settings.predict_monitor_interval_s,
            )
        )
    return jobs
