"""The recommendation job ``personify serve`` schedules: training the learned index on the
lake (``personify.recommend.index``) and pruning the live counters that decayed to nothing
(``personify.recommend.stage.prune_counters``)."""

from __future__ import annotations

import asyncio
from typing import Any

from personify.clock import Clock
from personify.errors import ValidationError
from personify.jobs.schedule import PeriodicJob
from personify.profiles.events import datetime_ms
from personify.recommend.index import RecommendationIndexer
from personify.recommend.stage import prune_counters
from personify.settings import Settings
from personify.store.database import Database, reachable

__all__ = ["TRAIN_JOB", "recommend_jobs", "train_index"]

TRAIN_JOB = "recommend-train"


def train_index(indexer: RecommendationIndexer, db: Database, clock: Clock) -> dict[str, Any]:
    """Prune the decayed counters, then train the index now; a lake without interactions
    yet is skipped (reported, not failed)."""
    with reachable(), db.begin() as conn:
        pruned = prune_counters(conn, datetime_ms(clock.now()))
    try:
        run = indexer.train()
    except ValidationError as exc:
        if exc.code != "no_interactions":
            raise
        return {"skipped": exc.code, "pruned": pruned}
    return {**run.to_dict(), "pruned": pruned}


def recommend_jobs(
    settings: Settings, indexer: RecommendationIndexer, db: Database, clock: Clock
) -> list[PeriodicJob]:
    """The index trained every ``recommend_train_interval_s`` where the lake is written
    (``run_lake_sink``): the process that writes the lake reads it."""

    async def run_train() -> dict[str, Any]:
        return await asyncio.to_thread(train_index, indexer, db, clock)

    if not settings.run_lake_sink:
        return []
    return [
        PeriodicJob(
            TRAIN_JOB,
            run_train,
            settings.recommend_train_interval_s,
            first_delay_s=settings.recommend_train_interval_s,
        )
    ]
