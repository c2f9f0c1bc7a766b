"""Real-time scoring: the worker's batch stage that re-scores every profile a batch changed
with the served churn and CLV models, in the transaction that stores the profiles.

Each served model is loaded once and kept; the stage asks the registry which versions are
served once per batch (one small query), so a promotion or a rollback swaps the model at the
next batch. The touched profiles are evaluated at the current time into the same flattened
documents the training frames hold, read into one matrix per model, and scored in one call;
a profile with too little history
gets the population's prior, flagged ``coldStart``.

A profile whose consent withdraws personalization is not scored (and loses its predictions).
The worker stores the scores; the reasons behind one are worked out when a profile is read
(``explain``), from the state that was scored, so the batch pays for no tree contributions.
When a served model cannot be loaded (its file is missing or changed), the profiles the batch
touched say so (``{"status": "unavailable", "reason"}``) and the batch goes on: a model never
stops the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import PersonifyError
from personify.predict.features import flatten_document
from personify.predict.learning import Model
from personify.predict.registry import ModelRegistry, ModelVersion
from personify.profiles.batch import ProfileBatch, StagedProfile
from personify.profiles.counters import CounterSpec
from personify.profiles.document import personalization_allowed
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.predictions import forget_predictions, write_predictions
from personify.profiles.state import ProfileState, evaluate_profile

__all__ = ["PredictionStage", "prediction_values"]

log = logging.getLogger(__name__)

REASONS = 3


def prediction_values(
    model: Model,
    version: ModelVersion,
    rows: Sequence[dict[str, Any]],
    at: datetime,
    *,
    with_reasons: bool = True,
) -> list[dict[str, Any]]:
    """The prediction documents of flattened profile documents (``flatten_document``) at
    ``at``, as ``profile_predictions`` keeps them."""
    if not rows:
        return []
    at_ms = datetime_ms(at)
    x = model.spec.rows(rows, at_ms)
    scores = model.predict(x)
    events = [float(row.get("events_total") or 0) for row in rows]
    cold = [model.is_cold(e) for e in events]
    reasons: list[list[dict[str, Any]]] | None = None
    if with_reasons:
        reasons = model.reasons(x, model.contributions(x), top=REASONS)
    scored_at = format_timestamp(at)
    out: list[dict[str, Any]] = []
    for i, is_cold in enumerate(cold):
        value: dict[str, Any] = {
            "model": version.target.key,
            "version": version.number,
            "modelId": version.id,
            "horizonDays": version.target.horizon_days,
            "scoredAt": scored_at,
            "coldStart": is_cold,
        }
        if reasons is not None or is_cold:
            value["reasons"] = [] if is_cold or reasons is None else reasons[i]
        if model.target.name == "churn":
            probability = (
                model.prior["churn_probability"]
                if is_cold
                else float(np.asarray(scores.churn_probability)[i])
            )
            value["probability"] = probability
        else:
            revenue = (
                model.prior["expected_revenue"]
                if is_cold
                else float(np.asarray(scores.expected_revenue)[i])
            )
            orders = (
                model.prior["expected_orders"]
                if is_cold
                else float(np.asarray(scores.expected_orders)[i])
            )
            value["expectedRevenue"] = revenue
            value["expectedOrders"] = orders
        out.append(value)
    return out


def model_inputs(state: ProfileState, features: FeatureSet, at_ms: int) -> dict[str, Any]:
    """A profile as a model reads it: its flattened document at ``at_ms`` without the JSON
    sections (affinities, last events) no model reads."""
    return flatten_document(evaluate_profile(state, features, at_ms, json_sections=False))


def explain(
    registry: ModelRegistry,
    features: FeatureSet,
    state: ProfileState,
    predictions: dict[str, Any],
) -> dict[str, Any]:
    """``predictions`` (a profile's, by target) with the reasons of each score: the largest
    feature contributions of the version that scored it, on the profile as it was scored
    (the stored state, evaluated at ``scoredAt``: the worker scores a profile again whenever
    it changes, so the state is the one scored). The worker stores scores only; reasons are
    worked out when asked. A version that cannot be read leaves its score without reasons."""
    explained: dict[str, Any] = {}
    for target_name, value in predictions.items():
        value = dict(value)
        explained[target_name] = value
        model_id = value.get("modelId")
        if "reasons" in value or not isinstance(model_id, int) or "scoredAt" not in value:
            continue
        try:
            version = registry.get(model_id)
            model = registry.load(version)
        except PersonifyError:
            value["reasons"] = []
            continue
        at = datetime.fromisoformat(str(value["scoredAt"]))
        x = model.spec.rows([model_inputs(state, features, datetime_ms(at))], datetime_ms(at))
        value["reasons"] = model.reasons(x, model.contributions(x), top=REASONS)[0]
    return explained


class PredictionStage:
    """Scores the profiles a batch touched with the served models (module docstring)."""

    name = "predictions"

    def __init__(
        self,
        registry: ModelRegistry,
        features: FeatureSet,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._registry = registry
        self._features = features
        self._clock = clock or SystemClock()
        self.failures: dict[str, str] = {}
        self._versions: dict[int, ModelVersion] = {}

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """None: models read the evaluated profile, not event counters."""
        return ()

    def _served(self) -> list[tuple[ModelVersion, Model | None, str | None]]:
        served: list[tuple[ModelVersion, Model | None, str | None]] = []
        for target, model_id in sorted(self._registry.served_ids().items()):
            # a version's row does not change once registered: read once per process, so a
            # batch costs one query to learn what is served
            version = self._versions.get(model_id)
            if version is None:
                version = self._versions[model_id] = self._registry.get(model_id)
            try:
                served.append((version, self._registry.load(version), None))
                self.failures.pop(target, None)
            except PersonifyError as exc:
                if self.failures.get(target) != str(exc):
                    log.error("the served %s model cannot be used: %s", target, exc)
                self.failures[target] = str(exc)
                served.append((version, None, exc.code))
        return served

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Score every touched profile with each served model and store the predictions."""
        merged = [gone for p in profiles for gone in p.merged_from]
        self.score(conn, [(p.profile_id, p.state) for p in profiles], forget=merged)

    def score(
        self,
        conn: sa.Connection,
        states: Sequence[tuple[str, ProfileState]],
        *,
        forget: Sequence[str] = (),
        targets: Collection[str] | None = None,
    ) -> int:
        """Score profiles (id, state) with the served models (of ``targets``, or all) at now
        and store the predictions; returns how many were scored. A profile whose consent
        withdraws personalization is not scored, and its predictions are dropped."""
        if not states and not forget:
            return 0
        served = [s for s in self._served() if targets is None or s[0].target.name in targets]
        allowed: list[tuple[str, ProfileState]] = []
        withdrawn: list[str] = []
        for pid, state in states:
            if personalization_allowed(state, self._features):
                allowed.append((pid, state))
            else:
                withdrawn.append(pid)
        forget_predictions(conn, [*forget, *withdrawn])
        if not served:
            return 0
        now = self._clock.now()
        at_ms = datetime_ms(now)
        rows = [model_inputs(state, self._features, at_ms) for _, state in allowed]
        for version, model, problem in served:
            if model is None:
                unavailable = {
                    "status": "unavailable",
                    "reason": problem,
                    "model": version.target.key,
                }
                values = {pid: (version.id, unavailable) for pid, _ in allowed}
            else:
                documents = prediction_values(model, version, rows, now, with_reasons=False)
                values = {
                    pid: (version.id, document)
                    for (pid, _), document in zip(allowed, documents, strict=True)
                }
            write_predictions(conn, version.target.name, values, now)
        return len(allowed)
