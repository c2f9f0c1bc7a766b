"""Rescoring stored profiles: after a promotion or a rollback, and as scores age.

The worker scores a profile when a batch changes it. A profile that does not change keeps
its score, which goes stale in two ways: another version is served now, or time alone moved
its features (a churn probability rises as the days since the last visit grow). A pass
(``PredictionRescore.run``) scores, for each served target, every stored profile whose
prediction is missing, is from another version, or is older than ``stale_after_s``: a page
of profiles per transaction, their rows locked (PostgreSQL), read and scored by the worker's
own ``PredictionStage.score``.

``personify serve`` runs a pass every ``PERSONIFY_PREDICT_RESCORE_INTERVAL_S``
(``prediction-rescore`` job); ``personify predict rescore`` runs one from the command line.
Two passes at once are safe: a page's rows are locked, and a score written twice is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.predict.registry import ModelRegistry
from personify.predict.stage import PredictionStage
from personify.profiles.state import decode_state, state_text
from personify.profiles.tables import profile_predictions, profiles
from personify.store.database import Database

__all__ = ["PredictionRescore", "RescoreResult"]

Progress = Callable[[str, int], None]
# called with each page's (profile_id, version, state) rows in its transaction, after scoring:
# the segment rules that read predictions are evaluated again there
AfterScoring = Callable[[sa.Connection, Sequence[Any]], object]


@dataclass(slots=True)
class RescoreResult:
    """What one pass scored, per target."""

    scored: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``personify predict rescore`` and of the job's status."""
        return {"scored": self.scored, "elapsedSeconds": round(self.elapsed_s, 3)}


class PredictionRescore:
    """Scores the stored profiles whose predictions are missing, stale or from another version
    (module docstring)."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        stage: PredictionStage,
        *,
        clock: Clock | None = None,
        stale_after_s: float = 86_400.0,
        page_size: int = 500,
        after_scoring: AfterScoring | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._stage = stage
        self._clock = clock or SystemClock()
        self._stale_after = timedelta(seconds=stale_after_s)
        self._page_size = max(1, page_size)
        self._after_scoring = after_scoring

    def run(self, *, progress: Progress | None = None) -> RescoreResult:
        """One pass over every served target; ``progress(target, scored)`` after each page."""
        started = time.monotonic()
        result = RescoreResult()
        for target, model_id in sorted(self._registry.served_ids().items()):
            result.scored[target] = self._target(target, model_id, progress)
        result.elapsed_s = time.monotonic() - started
        return result

    def _target(self, target: str, model_id: int, progress: Progress | None) -> int:
        p, pp = profiles.c, profile_predictions.c
        stale_before = self._clock.now() - self._stale_after
        joined = profiles.outerjoin(
            profile_predictions, sa.and_(pp.profile_id == p.profile_id, pp.target == target)
        )
        needs = sa.or_(
            pp.profile_id.is_(None), pp.model_id != model_id, pp.scored_at < stale_before
        )
        scored = 0
        after = ""
        while True:
            with self._db.begin() as conn:
                rows = conn.execute(
                    sa.select(p.profile_id, p.version, p.state)
                    .select_from(joined)
                    .where(p.profile_id > after, needs)
                    .order_by(p.profile_id)
                    .limit(self._page_size)
                    .with_for_update(of=profiles)
                ).all()
                if not rows:
                    return scored
                states = [(str(pid), decode_state(state_text(blob))) for pid, _, blob in rows]
                scored += self._stage.score(conn, states, targets={target})
                if self._after_scoring is not None:
                    self._after_scoring(conn, rows)
                after = str(rows[-1][0])
            if progress is not None:
                progress(target, scored)
            if len(rows) < self._page_size:
                return scored
