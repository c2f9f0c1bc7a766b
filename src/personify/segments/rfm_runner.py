"""An RFM run: every buyer's figures read from the lake, cut into quintiles, saved, and the
cells made segments whose members a backfill then finds (``personify.segments.rfm``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from personify.clock import Clock, SystemClock
from personify.lake.warehouse import Warehouse
from personify.profiles.events import datetime_ms
from personify.segments.repository import SegmentRepository
from personify.segments.rfm import RFM_QUERY, RfmModel, RfmRuns, model_from_figures
from personify.store.database import Database

__all__ = ["RfmRunResult", "RfmRunner"]


@dataclass(frozen=True, slots=True)
class RfmRunResult:
    """A run's model and how long it took."""

    model: RfmModel
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``personify segments rfm`` and ``POST /v1/rfm/runs``."""
        return {**self.model.to_dict(), "elapsedSeconds": round(self.elapsed_s, 3)}


class RfmRunner:
    """Computes and saves RFM runs."""

    def __init__(
        self, db: Database, repository: SegmentRepository, *, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._repository = repository
        self._runs = RfmRuns(db)
        self._clock = clock or SystemClock()

    def run(self, warehouse: Warehouse) -> RfmRunResult:
        """Read every buyer's figures from ``warehouse`` (the lake, at its version), cut
        them into quintiles at now, and save the run and its cells (with a backfill)."""
        started = time.monotonic()
        now = self._clock.now()
        table = warehouse.query(RFM_QUERY)
        last = [int(v) for v in table.column("last_order_ms").to_pylist()]
        frequency = [float(v) for v in table.column("frequency").to_pylist()]
        monetary = [float(v or 0.0) for v in table.column("monetary").to_pylist()]
        cuts = model_from_figures(last, frequency, monetary, at_ms=datetime_ms(now))
        with self._db.begin() as conn:
            run_id = self._runs.save(
                conn,
                computed_at=now,
                buyers=len(last),
                cuts=cuts,
                lake_version=warehouse.version,
            )
            self._repository.save_rfm_cells(conn, run_id)
        model = RfmModel(
            run_id=run_id,
            computed_at=now,
            buyers=len(last),
            recency_days=cuts[0],
            frequency=cuts[1],
            monetary=cuts[2],
            lake_version=warehouse.version,
        )
        return RfmRunResult(model, time.monotonic() - started)

    def current(self) -> RfmModel | None:
        """The newest run, if any."""
        return self._runs.current()
