"""Monitoring served models: drift of what they read and what they say, and how well they
did once the truth is known.

A check (``ModelMonitor.check``), for each served target:

* **Feature drift**: the population stability index (PSI) of every feature the model reads,
  between the rows it was fit on (bins kept in its training report) and the profiles it
  scored in the last day (``window_s``; up to ``sample_users`` of them, evaluated now).
* **Prediction drift**: the PSI of those profiles' scores against the scores the model gave
  as of its cut-off, and their summary (mean, quantiles); the checks over time are the
  history of the score distribution.
* **Realised performance**: each check keeps the scored users and their scores as a cohort
  (a Parquet file in the models folder). Once a cohort's horizon has passed and the lake
  has received events up to its end, its outcomes are read from the lake like training
  labels are (the ids each profile has now) and scored: AUC and calibration for churn, MAE
  for CLV, beside the version's validation figures.
* **Alerts**: a feature or the score with PSI above ``psi_threshold`` (0.25: "a significant
  shift"), a realised AUC more than ``auc_drop`` below validation, a realised revenue MAE
  more than ``mae_rise`` (relative) above it, or a served model that cannot be read.

Checks are kept in ``prediction_checks``; ``GET /v1/models/targets/{target}/monitoring`` and
``personify predict monitor`` show them, and ``personify serve`` runs one a day
(``prediction-monitor``), retraining a target whose check alerts on drift, and every target
whose served version is older than ``PERSONIFY_PREDICT_RETRAIN_INTERVAL_S`` (weekly), both
through the promotion gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import PersonifyError
from personify.lake.table import Lake
from personify.predict.learning import Model
from personify.predict.metrics import churn_metrics, clv_metrics, stability_against
from personify.predict.registry import ModelRegistry, ModelVersion
from personify.predict.stage import model_inputs
from personify.predict.tables import prediction_checks
from personify.predict.targets import Target
from personify.predict.training import NO_OUTCOME, arrivals, outcomes
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.state import decode_state, state_text
from personify.profiles.tables import identities, profile_predictions, profiles
from personify.store.database import Database

__all__ = ["ALERT_KINDS", "ModelMonitor", "MonitorThresholds", "retraining_due"]

# every kind of alert a check raises
ALERT_KINDS = (
    "feature_drift",
    "score_drift",
    "realised_auc",
    "realised_mae",
    "model_unavailable",
)

log = logging.getLogger(__name__)

_CHUNK = 500
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class MonitorThresholds:
    """When a check alerts (module docstring)."""

    psi_threshold: float = 0.25
    auc_drop: float = 0.05
    mae_rise: float = 0.2
    window_s: float = 86_400.0
    sample_users: int = 20_000


class ModelMonitor:
    """Checks the served models (module docstring)."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        features: FeatureSet,
        models_dir: Path,
        *,
        lake: Lake | None = None,
        clock: Clock | None = None,
        thresholds: MonitorThresholds | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._features = features
        self._cohorts = Path(models_dir) / "cohorts"
        self._lake = lake
        self._clock = clock or SystemClock()
        self.thresholds = thresholds or MonitorThresholds()

    # -- checks ------------------------------------------------------------------------------

    def check(self, *, record: bool = True) -> list[dict[str, Any]]:
        """Check every served target now; with ``record``, keep the checks and the cohorts."""
        results = []
        for target, model_id in sorted(self._registry.served_ids().items()):
            version = self._registry.get(model_id)
            result = self._check(version, record=record)
            if record:
                with self._db.begin() as conn:
                    conn.execute(
                        prediction_checks.insert().values(
                            target=target,
                            model_id=version.id,
                            checked_at=self._clock.now(),
                            alert=bool(result["alerts"]),
                            report=_encode(result).decode(),
                        )
                    )
            results.append(result)
        return results

    def history(self, target: str, *, limit: int = 30) -> list[dict[str, Any]]:
        """A target's checks, newest first."""
        c = prediction_checks.c
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(c.report).where(c.target == target).order_by(c.id.desc()).limit(limit)
            ).scalars()
            return [_decode(r) for r in rows]

    def _check(self, version: ModelVersion, *, record: bool) -> dict[str, Any]:
        now = self._clock.now()
        result: dict[str, Any] = {
            "target": version.target.name,
            "targetKey": version.target.key,
            "modelId": version.id,
            "version": version.number,
            "checkedAt": format_timestamp(now),
            "alerts": [],
        }
        try:
            model = self._registry.load(version)
        except PersonifyError as exc:
            result["alerts"].append({"kind": "model_unavailable", "reason": exc.code})
            return result
        ids, scores = self._scored(version, now)
        result["users"] = len(ids)
        reference = version.report.get("monitoring") or {}
        if ids:
            result["featureDrift"] = self._feature_drift(model, reference, ids, now)
            result["scoreDrift"] = _score_drift(reference, scores)
            worst = sorted(result["featureDrift"].items(), key=lambda kv: -(kv[1] or 0.0))
            for name, psi in worst:
                if psi is not None and psi > self.thresholds.psi_threshold:
                    result["alerts"].append({"kind": "feature_drift", "feature": name, "psi": psi})
            psi = result["scoreDrift"].get("psi")
            if psi is not None and psi > self.thresholds.psi_threshold:
                result["alerts"].append({"kind": "score_drift", "psi": psi})
            if record:
                self._keep_cohort(version, now, ids, scores)
        result["realised"] = self._realised(version)
        for cohort in result["realised"]:
            alert = self._realised_alert(version, cohort)
            if alert is not None:
                result["alerts"].append(alert)
        return result

    def _scored(self, version: ModelVersion, now: datetime) -> tuple[list[str], list[float]]:
        """The profiles this version scored in the window (newest first, a sample) and their
        scores; every profile it scored when none was in the window."""
        c = profile_predictions.c
        since = now - timedelta(seconds=self.thresholds.window_s)
        query = (
            sa.select(c.profile_id, c.value)
            .where(c.target == version.target.name, c.model_id == version.id)
            .order_by(c.scored_at.desc(), c.profile_id)
            .limit(self.thresholds.sample_users)
        )
        with self._db.connect() as conn:
            rows = conn.execute(query.where(c.scored_at >= since)).all()
            if not rows:
                rows = conn.execute(query).all()
        field = "probability" if version.target.name == "churn" else "expectedRevenue"
        ids, scores = [], []
        for pid, value in rows:
            number = _decode(value).get(field)
            if isinstance(number, int | float):
                ids.append(str(pid))
                scores.append(float(number))
        return ids, scores

    def _feature_drift(
        self, model: Model, reference: dict[str, Any], ids: list[str], now: datetime
    ) -> dict[str, float | None]:
        at_ms = datetime_ms(now)
        rows = []
        with self._db.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                for blob in conn.execute(
                    sa.select(profiles.c.state).where(
                        profiles.c.profile_id.in_(ids[start : start + _CHUNK])
                    )
                ).scalars():
                    state = decode_state(state_text(blob))
                    rows.append(model_inputs(state, self._features, at_ms))
        if not rows:
            return {}
        x = model.spec.rows(rows, at_ms)
        bins = reference.get("features") or {}
        drift: dict[str, float | None] = {}
        for j, name in enumerate(model.spec.names):
            if name in bins:
                value = stability_against(bins[name], x[:, j])
                drift[name] = None if value is None else round(value, 6)
        return drift

    # -- cohorts -----------------------------------------------------------------------------

    def _folder(self, version: ModelVersion) -> Path:
        return self._cohorts / version.target.name

    def _keep_cohort(
        self, version: ModelVersion, now: datetime, ids: list[str], scores: list[float]
    ) -> None:
        folder = self._folder(version)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {"profile_id": pa.array(ids, pa.string()), "score": pa.array(scores, pa.float64())}
        ).replace_schema_metadata(
            {
                "as_of": format_timestamp(now),
                "model_id": str(version.id),
                "horizon_days": str(version.target.horizon_days),
                "event": version.target.event or "",
            }
        )
        pq.write_table(table, folder / f"{now.strftime('%Y%m%dT%H%M%S')}-{version.id}.parquet")

    def _realised(self, version: ModelVersion) -> list[dict[str, Any]]:
        """The cohorts of this target whose horizon has passed since the last check, scored
        against what their users did (each once: its result is kept beside it)."""
        folder = self._folder(version)
        if self._lake is None or not folder.is_dir() or self._lake.version() is None:
            return []
        _, newest = arrivals(self._lake, self._lake.version())
        done = []
        for path in sorted(folder.glob("*.parquet")):
            verdict = path.with_suffix(".json")
            if verdict.exists():
                continue
            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            as_of = datetime.fromisoformat(meta["as_of"])
            horizon = timedelta(days=float(meta["horizon_days"]))
            if newest is None or as_of + horizon > min(newest, self._clock.now()):
                continue
            result = self._score_cohort(version, table, meta, as_of)
            verdict.write_bytes(_encode(result))
            done.append(result)
        return done

    def _score_cohort(
        self, version: ModelVersion, table: pa.Table, meta: dict[str, str], as_of: datetime
    ) -> dict[str, Any]:
        assert self._lake is not None
        ids = [str(v) for v in table.column("profile_id").to_pylist()]
        scores = table.column("score").to_numpy()
        owner: dict[str, str] = {}
        with self._db.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                for identity, pid in conn.execute(
                    sa.select(identities.c.identity, identities.c.profile_id).where(
                        identities.c.profile_id.in_(ids[start : start + _CHUNK])
                    )
                ):
                    owner[str(identity)] = str(pid)
        owner.update((pid, pid) for pid in ids)
        cohort_target = Target(
            version.target.name, float(meta["horizon_days"]), meta["event"] or None
        )
        done = outcomes(self._lake, owner, cohort_target, as_of=as_of, version=None)
        truth = [done.get(pid, NO_OUTCOME) for pid in ids]
        result: dict[str, Any] = {
            "asOf": meta["as_of"],
            "modelId": int(meta["model_id"]),
            "horizonDays": float(meta["horizon_days"]),
        }
        if version.target.name == "churn":
            churned = np.array([float(o.events == 0) for o in truth])
            result["metrics"] = churn_metrics(churned, np.clip(scores, 0.0, 1.0))
        else:
            revenue = np.array([o.revenue for o in truth])
            orders = np.array([float(o.orders) for o in truth])
            # the cohort keeps revenue only: orders are judged by their total alone
            expected_orders = np.full(len(ids), orders.mean() if len(ids) else 0.0)
            result["metrics"] = clv_metrics(revenue, scores, orders, expected_orders)
            result["metrics"].pop("orders_mae", None)
        return result

    def _realised_alert(
        self, version: ModelVersion, cohort: dict[str, Any]
    ) -> dict[str, Any] | None:
        validated = version.report.get("model") or {}
        metrics = cohort.get("metrics") or {}
        if version.target.name == "churn":
            expected, realised = validated.get("roc_auc"), metrics.get("roc_auc")
            if (
                expected is not None
                and realised is not None
                and realised < expected - self.thresholds.auc_drop
            ):
                return {
                    "kind": "realised_auc",
                    "asOf": cohort["asOf"],
                    "validation": expected,
                    "realised": realised,
                }
            return None
        expected, realised = validated.get("revenue_mae"), metrics.get("revenue_mae")
        if (
            expected
            and realised is not None
            and realised > expected * (1 + self.thresholds.mae_rise)
        ):
            return {
                "kind": "realised_mae",
                "asOf": cohort["asOf"],
                "validation": expected,
                "realised": realised,
            }
        return None


def _score_drift(reference: dict[str, Any], scores: list[float]) -> dict[str, Any]:
    values = np.asarray(scores, dtype=np.float64)
    summary: dict[str, Any] = {
        "users": len(values),
        "mean": round(float(values.mean()), 6),
        "p10": round(float(np.quantile(values, 0.1)), 6),
        "p50": round(float(np.quantile(values, 0.5)), 6),
        "p90": round(float(np.quantile(values, 0.9)), 6),
    }
    bins = reference.get("score")
    psi = stability_against(bins, values) if bins else None
    summary["psi"] = None if psi is None else round(psi, 6)
    return summary


# a version retrained for drift less than this long ago is not retrained for drift again
_MIN_AGE_FOR_DRIFT = timedelta(days=1)
_DRIFT_KINDS = frozenset({"feature_drift", "score_drift", "realised_auc", "realised_mae"})


def retraining_due(
    registry: ModelRegistry,
    checks: list[dict[str, Any]],
    *,
    interval_s: float,
    now: datetime,
) -> list[tuple[ModelVersion, str]]:
    """The served versions to retrain now, with why: ``schedule`` when a version was trained
    ``interval_s`` or longer ago, ``drift`` when its check alerts on drift (and it is a day
    old at least, so a retrained version that still drifts is not retrained in a loop)."""
    alerts = {
        check["target"]: any(a["kind"] in _DRIFT_KINDS for a in check.get("alerts", []))
        for check in checks
    }
    due = []
    for target in sorted(registry.served_ids()):
        version = registry.served(target)
        if version is None:
            continue
        age = now - version.created_at
        if age >= timedelta(seconds=interval_s):
            due.append((version, "schedule"))
        elif alerts.get(target) and age >= _MIN_AGE_FOR_DRIFT:
            due.append((version, "drift"))
    return due
