"""Quality runs, kept in the state database so ``personify quality report`` can show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.quality.runner import CheckResult, QualityRun
from personify.quality.tables import quality_runs
from personify.store.database import Database, aware


def _row_to_run(row: sa.Row[tuple[object, ...]]) -> QualityRun:
    m = row._mapping
    # stored by ``CheckResult.to_dict``, whose keys are the field names
    results = [CheckResult(**r) for r in msgspec.json.decode(m["results"])]
    created_at = aware(m["created_at"])
    assert created_at is not None
    return QualityRun(
        stage=m["stage"],
        dataset=m["dataset"],
        row_count=int(m["row_count"]),
        created_at=created_at,
        results=results,
        run_id=m["id"],
        lineage_id=m["lineage_id"],
    )


class QualityRepository:
    """Record quality runs and read back the latest ones."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, run: QualityRun) -> None:
        """Store one run with all its check results."""
        values: dict[str, Any] = {
            "id": run.run_id,
            "stage": run.stage,
            "dataset": run.dataset[:1000],
            "status": run.status,
            "row_count": run.row_count,
            "results": msgspec.json.encode([r.to_dict() for r in run.results]).decode(),
            "lineage_id": run.lineage_id,
            "created_at": run.created_at,
        }
        with self._db.begin() as conn:
            conn.execute(quality_runs.insert().values(**values))

    def latest(self, stage: str | None = None, *, limit: int = 1) -> list[QualityRun]:
        """The newest ``limit`` runs of ``stage`` (of every stage when None), newest first."""
        runs: list[QualityRun] = []
        with self._db.connect() as conn:
            if stage is None:
                distinct = sa.select(quality_runs.c.stage).distinct()
                stages = sorted(s for (s,) in conn.execute(distinct))
            else:
                stages = [stage]
            for name in stages:
                query = (
                    sa.select(quality_runs)
                    .where(quality_runs.c.stage == name)
                    .order_by(quality_runs.c.created_at.desc())
                    .limit(limit)
                )
                runs.extend(_row_to_run(r) for r in conn.execute(query))
        return runs

    def row_counts(self, stage: str, *, dataset_prefix: str = "", limit: int = 14) -> list[int]:
        """Row counts of the newest ``limit`` passed or warned runs of ``stage``, oldest first."""
        query = (
            sa.select(quality_runs.c.row_count)
            .where(
                quality_runs.c.stage == stage,
                quality_runs.c.status != "failed",
                quality_runs.c.dataset.startswith(dataset_prefix, autoescape=True),
            )
            .order_by(quality_runs.c.created_at.desc())
            .limit(limit)
        )
        with self._db.connect() as conn:
            counts = [int(c) for (c,) in conn.execute(query)]
        return list(reversed(counts))

    def prune(self, stage: str, *, keep: int, before: datetime | None = None) -> int:
        """Delete all but the newest ``keep`` runs of ``stage`` (only older than ``before``)."""
        with self._db.begin() as conn:
            cutoff = conn.execute(
                sa.select(quality_runs.c.created_at)
                .where(quality_runs.c.stage == stage)
                .order_by(quality_runs.c.created_at.desc())
                .offset(keep)
                .limit(1)
            ).scalar()
            if cutoff is None:
                return 0
            condition = sa.and_(quality_runs.c.stage == stage, quality_runs.c.created_at <= cutoff)
            if before is not None:
                condition = sa.and_(condition, quality_runs.c.created_at < before)
            return int(conn.execute(quality_runs.delete().where(condition)).rowcount)
