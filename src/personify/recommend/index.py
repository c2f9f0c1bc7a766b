"""The learned model's serving index: fitted on the lake as of now, each user's top items and
each item's similar items stored in the state database, with the run's lineage.

A run (``RecommendationIndexer.train``):

1. reads the lake's interactions received by now (``read_interactions``), and the version read;
2. picks the model: the configured one, or with ``auto`` the one the offline evaluation
   chooses (``evaluate_split`` of the learned models at ``holdout_days`` before now; when
   that split has no test user, EASE, and the run says so);
3. fits it on every interaction, ranks each user's top ``size`` items (without the items they
   interacted with) and each item's ``size`` most similar items;
4. in one transaction, records the run (model, parameters, lake version, metrics, as-of) and
   replaces the index with its rows, so a reader sees the old index or the new one, whole.

Users are profile ids as the lake resolves them (``personify.recommend.interactions``), so the
serving layer finds a user by the profile id it resolved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import NotFound, ValidationError
from personify.lake.table import Lake
from personify.recommend.evaluation import LEARNED, evaluate_split
from personify.recommend.interactions import DEFAULT_WEIGHTS, read_interactions
from personify.recommend.learned import DEFAULT_SEED, Als, Bpr, Ease
from personify.recommend.ranking import ScoringRecommender
from personify.recommend.tables import recommend_item_index, recommend_runs, recommend_user_index
from personify.store.database import Database, aware, reachable

__all__ = ["MODELS", "IndexRun", "RecommendationIndexer", "latest_run"]

# the learned models an index can serve, by name
MODELS: Mapping[str, Callable[[int], ScoringRecommender]] = {
    "ease": lambda seed: Ease(),
    "als": lambda seed: Als(seed=seed),
    "bpr": lambda seed: Bpr(seed=seed),
}
# which attributes of each model are its parameters (recorded with the run)
_PARAMS = {
    "ease": ("l2", "max_items"),
    "als": ("factors", "regularization", "alpha", "iterations", "seed"),
    "bpr": ("factors", "learning_rate", "regularization", "iterations", "seed"),
}
DEFAULT_HOLDOUT_DAYS = 14.0
# the profile id and item id columns' widths: longer ids are not indexed
_MAX_PROFILE_CHARS = 512
_MAX_ITEM_CHARS = 200
_INSERT_ROWS = 1_000


@dataclass(frozen=True, slots=True)
class IndexRun:
    """One training of the index and what it was trained on."""

    id: int
    model: str
    params: dict[str, Any]
    lake_version: int | None
    metrics: dict[str, Any]
    as_of: datetime
    users: int
    items: int
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON."""
        return {
            "id": self.id,
            "model": self.model,
            "params": self.params,
            "lakeVersion": self.lake_version,
            "metrics": self.metrics,
            "asOf": format_timestamp(self.as_of),
            "users": self.users,
            "items": self.items,
            "createdAt": format_timestamp(self.created_at),
        }


def _run(row: Any) -> IndexRun:
    as_of, created_at = aware(row.as_of), aware(row.created_at)
    assert as_of is not None and created_at is not None
    return IndexRun(
        id=int(row.id),
        model=str(row.model),
        params=msgspec.json.decode(row.params),
        lake_version=None if row.lake_version is None else int(row.lake_version),
        metrics=msgspec.json.decode(row.metrics),
        as_of=as_of,
        users=int(row.users),
        items=int(row.items),
        created_at=created_at,
    )


def latest_run(conn: sa.Connection) -> IndexRun | None:
    """The newest run (the one the index holds), if any."""
    row = conn.execute(
        sa.select(recommend_runs).order_by(recommend_runs.c.id.desc()).limit(1)
    ).first()
    return _run(row) if row is not None else None


def _pairs(items: tuple[str, ...], scores: tuple[float, ...]) -> str:
    return msgspec.json.encode(
        [[item, round(score, 6)] for item, score in zip(items, scores, strict=True)]
    ).decode()


class RecommendationIndexer:
    """Trains the learned model on the lake and stores its index (module docstring)."""

    def __init__(
        self,
        db: Database,
        lake: Lake,
        *,
        clock: Clock | None = None,
        model: str = "auto",
        size: int = 100,
        holdout_days: float = DEFAULT_HOLDOUT_DAYS,
        seed: int = DEFAULT_SEED,
        k: int = 10,
    ) -> None:
        self._db = db
        self._lake = lake
        self._clock = clock or SystemClock()
        self.model = model
        self.size = size
        self.holdout_days = holdout_days
        self.seed = seed
        self.k = k

    def _choose(self, interactions: Any, as_of: datetime, model: str) -> tuple[str, dict[str, Any]]:
        """The model's name and the evaluation behind it."""
        names = list(LEARNED) if model == "auto" else [model]
        split_at = as_of - timedelta(days=self.holdout_days)
        try:
            result = evaluate_split(
                interactions,
                split_at,
                k=self.k,
                recommenders=[MODELS[name](self.seed) for name in names],
            )
        except ValidationError as exc:
            if exc.code != "no_test_users":
                raise
            fallback = "ease" if model == "auto" else model
            return fallback, {"chosenBy": "default", "evaluation": None, "reason": exc.code}
        chosen = str(result["chosen"])
        evaluation = {
            "asOf": result["as_of"],
            "k": result["k"],
            "testUsers": result["test_users"],
            "recommenders": result["recommenders"],
        }
        return chosen, {
            "chosenBy": "evaluation" if model == "auto" else "configuration",
            "evaluation": evaluation,
        }

    def train(self, *, model: str | None = None) -> IndexRun:
        """Fit the model on the lake as of now and replace the index (module docstring).

        Raises ``ValidationError`` for an unknown model (``invalid_model``) or a lake without
        interactions (``no_interactions``)."""
        wanted = model or self.model
        if wanted != "auto" and wanted not in MODELS:
            raise ValidationError(
                f"the model must be auto, {', '.join(MODELS)}, not {wanted!r}",
                code="invalid_model",
            )
        now = self._clock.now()
        interactions, version = read_interactions(self._lake, until=now, weights=DEFAULT_WEIGHTS)
        if not len(interactions):
            raise ValidationError(
                "the lake holds no product interactions yet: nothing to train on",
                code="no_interactions",
            )
        name, metrics = self._choose(interactions, now, wanted)
        started = time.perf_counter()
        fitted = MODELS[name](self.seed)
        fitted.fit(interactions)
        metrics["fitSeconds"] = round(time.perf_counter() - started, 3)
        users = [u for u in fitted.user_ids if len(u) <= _MAX_PROFILE_CHARS]
        ranked = fitted.recommend(users, self.size, exclude_seen=True)
        user_rows = [
            {"profile_id": user, "items": _pairs(r.items, r.scores)}
            for user, r in zip(users, ranked, strict=True)
            if r.items
        ]
        item_rows = []
        for item in fitted.item_ids:
            if len(item) > _MAX_ITEM_CHARS:
                continue
            similar = fitted.similar(item, self.size)
            if similar.items:
                item_rows.append({"item_id": item, "items": _pairs(similar.items, similar.scores)})
        params = {key: getattr(fitted, key) for key in _PARAMS[name]}
        created = self._clock.now()
        with reachable(), self._db.begin() as conn:
            inserted = conn.execute(
                recommend_runs.insert().values(
                    model=name,
                    params=msgspec.json.encode(params).decode(),
                    lake_version=version,
                    metrics=msgspec.json.encode(metrics).decode(),
                    as_of=now,
                    users=len(user_rows),
                    items=len(item_rows),
                    created_at=created,
                )
            )
            key = inserted.inserted_primary_key
            assert key is not None
            run_id = int(key[0])
            conn.execute(recommend_user_index.delete())
            conn.execute(recommend_item_index.delete())
            for table, rows in (
                (recommend_user_index, user_rows),
                (recommend_item_index, item_rows),
            ):
                for start in range(0, len(rows), _INSERT_ROWS):
                    chunk = [
                        {**row, "run_id": run_id} for row in rows[start : start + _INSERT_ROWS]
                    ]
                    conn.execute(table.insert(), chunk)
        return IndexRun(
            id=int(run_id),
            model=name,
            params=params,
            lake_version=version,
            metrics=metrics,
            as_of=now,
            users=len(user_rows),
            items=len(item_rows),
            created_at=created,
        )

    def latest(self) -> IndexRun:
        """The run the index holds; raises ``NotFound`` before the first."""
        with reachable(), self._db.connect() as conn:
            run = latest_run(conn)
        if run is None:
            raise NotFound(
                "no recommendation index was trained yet: run `personify recommend train`",
                code="no_index",
            )
        return run
