"""Training, backtests and batch scoring of churn and lifetime-value models, always beside the
BG/NBD (+ Gamma-Gamma) baseline on the same users and cut-off.

**Train at T** (``ModelTrainer.train``) uses only what was known at T. The served model is fit
on the features as of T - H with the labels of (T - H, T]; it then scores as of T, predicting
(T, T + H]. Validation is temporal: a model fit on the features as of T - 2H with the labels
of (T - 2H, T - H] predicts the users as of T - H, and is compared with what they did in
(T - H, T]; that validation chooses the number of boosting rounds, calibrates churn, and
picks the CLV model. When the lake's history does not reach back to T - 2H, validation is a
held-out fifth of the users at T - H (by a hash of their id), and the report says so.

**The gate.** A version is promoted only when its validation metric (ROC-AUC for churn,
revenue MAE for CLV) beats both the baseline's and the served version's on the same
validation users. Otherwise it is kept and reported, not served.

**Backtest at T** (``evaluate``) trains exactly as ``train`` at T would, scores the users as
of T, and compares with what happened in (T, T + H], for the model and the baseline alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import NotFound, ValidationError
from personify.predict.baseline import (
    BgNbd,
    GammaGamma,
    fit_bg_nbd,
    fit_gamma_gamma,
)
from personify.predict.features import definitions_digest
from personify.predict.learning import (
    FeatureSpec,
    Matrix,
    Model,
    Scores,
    choose_features,
    fit_model,
    labels_of,
    take,
)
from personify.predict.metrics import (
    churn_metrics,
    clv_metrics,
    cumulative_gains,
    reference_bins,
)
from personify.predict.registry import ModelRegistry, ModelVersion
from personify.predict.targets import Target
from personify.predict.training import (
    FeatureJob,
    FeatureResult,
    append_labels,
    arrivals,
    outcomes,
)
from personify.predict.transactions import order_summaries

if TYPE_CHECKING:
    from personify.settings import Settings
    from personify.store.database import Database

__all__ = [
    "Baseline",
    "Evaluation",
    "ModelTrainer",
    "TrainingRun",
    "baseline_scores",
    "serve_scores",
]

# the share of users held out when the history is too short for a second window
HELD_OUT_SHARE = 0.2
# fewer users than this at T - 2H and validation holds users out instead
MIN_WINDOW_USERS = 50
# cut-offs pooled for training, a horizon apart divided by this many
WINDOWS = 3
# the baseline needs this many customers to fit
MIN_BASELINE_CUSTOMERS = 20


@dataclass(slots=True)
class TrainingRun:
    """A trained model, its report (validation beside the baseline and the served version,
    the gate's decision) and, when it was registered, its version."""

    model: Model
    report: dict[str, Any]
    version: ModelVersion | None = None
    promoted: bool = False


@dataclass(slots=True)
class Evaluation:
    """A backtest: the JSON it prints and the curves its HTML report plots."""

    result: dict[str, Any]
    curves: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Frame:
    """A feature table at a cut-off with its labels, and the owner map of ids at the cut-off."""

    as_of: datetime
    table: pa.Table
    owner: dict[str, str]

    @property
    def ids(self) -> list[str]:
        return [str(v) for v in self.table.column("user_id").to_pylist()]


def serve_scores(
    model: Model, table: pa.Table, x: Matrix | None = None, *, scores: Scores | None = None
) -> tuple[Scores, Matrix]:
    """The model's scores for a feature table as served (or ``scores`` it already gave, not
    changed): a profile with too little history (``Model.is_cold``) gets the population's
    prior. Returns the scores and the cold mask."""
    if scores is None:
        scores = model.predict(model.spec.matrix(table) if x is None else x)
    events = (
        table.column("events_total").cast(pa.float64()).to_numpy(zero_copy_only=False)
        if "events_total" in table.column_names
        else np.zeros(table.num_rows)
    )
    cold = np.asarray([model.is_cold(float(e)) for e in np.nan_to_num(events)], dtype=bool)
    columns = {
        name: None if values is None else np.where(cold, model.prior.get(name, 0.0), values)
        for name, values in (
            ("churn_probability", scores.churn_probability),
            ("expected_revenue", scores.expected_revenue),
            ("expected_orders", scores.expected_orders),
        )
    }
    return Scores(**columns), cold


class ModelTrainer:
    """Trains, backtests and scores models from the lake (module docstring)."""

    def __init__(
        self,
        job: FeatureJob,
        registry: ModelRegistry | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.job = job
        self.registry = registry
        self._clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings, *, db: Database | None = None) -> ModelTrainer:
        """A trainer on the settings' lake, feature definitions, state database and models
        folder."""
        from personify.store.database import open_database

        db = db or open_database(settings)
        return cls(
            FeatureJob.from_settings(settings, db=db),
            ModelRegistry(db, settings.resolved_models_dir),
        )

    # -- the cut-off ---------------------------------------------------------------------------

    def default_as_of(self) -> datetime:
        """Now, as far as the lake has received events (the newest ``received_at``)."""
        _, newest = arrivals(self.job.lake, self.job.lake.version())
        if newest is None:
            raise ValidationError(
                f"the lake at {self.job.lake.uri} has no events yet",
                code="label_window_not_observed",
            )
        return min(newest, self._clock.now())

    def _frame(self, target: Target, as_of: datetime, version: int | None) -> _Frame:
        table, owner, _ = self.job.build(as_of, version)
        done = outcomes(self.job.lake, owner, target, as_of=as_of, version=version)
        return _Frame(as_of, append_labels(table, target, done), owner)

    # -- training ------------------------------------------------------------------------------

    def train(
        self, target: Target, *, as_of: datetime | None = None, register: bool = True
    ) -> TrainingRun:
        """Train a version from what was known at ``as_of`` (module docstring); with
        ``register``, record it, run the gate and promote it when it passes."""
        as_of = as_of or self.default_as_of()
        horizon = timedelta(days=target.horizon_days)
        version = self.job.lake.version()
        self.job.require_observed(as_of, version)
        served_from = as_of - horizon
        step = timedelta(days=max(1.0, round(target.horizon_days / WINDOWS)))
        oldest, _ = arrivals(self.job.lake, version)
        # the served model learns from a chain of cut-offs, so that one unusual window (a
        # sale) weighs less; validation from the same chain a horizon back. Each frame is as
        # of its own cut-off with labels from its own window, all built in one pass
        served_cuts = [served_from - k * step for k in range(WINDOWS)]
        fit_cuts = [cut - horizon for cut in served_cuts]
        frames = self._frames(
            target,
            [served_from, *(c for c in served_cuts[1:] + fit_cuts if _after(c, oldest))],
            version,
        )
        latest = frames[served_from]
        if latest.table.num_rows == 0:
            raise ValidationError(
                f"no profile existed by {format_timestamp(served_from)}: train with a later "
                "--as-of or a shorter horizon",
                code="no_training_users",
            )
        spec = choose_features(latest.table)
        served_frames = [latest, *_chain(frames, served_cuts[1:], oldest)]
        fit_frames = _chain(frames, fit_cuts, oldest)
        latest_pair = (spec.matrix(latest.table), labels_of(latest.table, target))
        refit_pair = _pool(spec, target, served_frames)
        if fit_frames:
            method = {
                "method": "next_window",
                "fitAsOf": [format_timestamp(f.as_of) for f in fit_frames],
                "validateAsOf": format_timestamp(served_from),
                "fitRows": sum(f.table.num_rows for f in fit_frames),
                "validationUsers": latest.table.num_rows,
            }
            valid_rows = np.arange(latest.table.num_rows)
            fitted = fit_model(
                target, spec, _pool(spec, target, fit_frames), latest_pair, refit=refit_pair
            )
        else:
            held = _held_out(latest.ids)
            valid_rows = np.flatnonzero(held)
            fit_ids = {latest.ids[i] for i in np.flatnonzero(~held)}
            if len(valid_rows) == 0 or not fit_ids:
                raise ValidationError(
                    "too few users to hold some out for validation at "
                    f"{format_timestamp(served_from)}",
                    code="no_training_users",
                )
            pooled_ids = [i for f in served_frames for i in f.ids]
            fit_rows = np.array([n for n, i in enumerate(pooled_ids) if i in fit_ids])
            method = {
                "method": "held_out_users",
                "note": (
                    "the lake's history does not reach back two horizons before the cut-off, "
                    f"so validation holds out {HELD_OUT_SHARE:.0%} of the users at the same "
                    "cut-off instead of a later window"
                ),
                "fitAsOf": [format_timestamp(f.as_of) for f in served_frames],
                "validateAsOf": format_timestamp(served_from),
                "fitRows": len(fit_rows),
                "validationUsers": len(valid_rows),
            }
            fitted = fit_model(
                target,
                spec,
                take(refit_pair, fit_rows),
                take(latest_pair, valid_rows),
                refit=refit_pair,
            )
        model = fitted.model
        valid_table = latest.table.take(pa.array(valid_rows))
        # validation scores are those of the model fit before the refit: what was validated
        validation_scores, _ = serve_scores(model, valid_table, scores=fitted.validation)
        baseline = baseline_scores(
            self.job,
            target,
            latest.as_of,
            latest.owner,
            version,
            [latest.ids[i] for i in valid_rows],
        )
        truth = {name: values[valid_rows] for name, values in latest_pair[1].items()}
        report: dict[str, Any] = {
            "target": target.key,
            "describe": target.describe(),
            "asOf": format_timestamp(as_of),
            "kind": model.kind,
            "rounds": fitted.rounds,
            "features": len(spec.names),
            "validation": method,
            "model": _metrics(target, truth, validation_scores),
            "baseline": (
                _metrics(target, truth, baseline.scores) if baseline.scores is not None else None
            ),
            "baselineParameters": baseline.parameters,
        }
        if model.details:
            report["details"] = model.details
        report["monitoring"] = monitoring_reference(model, refit_pair[0], latest_pair[0])
        current = self.registry.served_for(target) if self.registry is not None else None
        if current is not None and self.registry is not None:
            report["current"] = {
                "version": current.number,
                "id": current.id,
                "asOf": format_timestamp(current.as_of),
            }
            if current.as_of <= served_from:
                # it never saw these users' labels: scored on the same split
                current_scores, _ = serve_scores(self.registry.load(current), valid_table)
                report["current"]["comparison"] = "same_validation_users"
                report["current"]["metrics"] = _metrics(target, truth, current_scores)
            else:
                # it was fit on these very labels: its score here would be in-sample, so it
                # is compared by the validation it had when it was trained
                report["current"]["comparison"] = "its_own_validation"
                report["current"]["metrics"] = current.report.get("model")
        report["gate"] = _gate(target, report)
        run = TrainingRun(model, report)
        if register and self.registry is not None:
            lineage = self.job.publish(
                "training_frame",
                latest.table,
                version=version,
                as_of=served_from,
                time_end=as_of,
                parameters={
                    "label": target.name,
                    "horizon_days": target.horizon_days,
                    "event": target.event,
                    "purpose": "model",
                },
                output=None,
            )
            passed = report["gate"]["decision"] == "promoted"
            run.version = self.registry.register(
                model,
                as_of=as_of,
                definitions=definitions_digest(self.job.features),
                lineage_id=lineage.lineage_id,
                report=report,
                status="promoted" if passed else "kept",
            )
            if passed:
                run.version = self.registry.promote(run.version.id, reason="gate")
                run.promoted = True
        return run

    def _frames(
        self, target: Target, cutoffs: Sequence[datetime], version: int | None
    ) -> dict[datetime, _Frame]:
        """Frames at each cut-off, with their labels, from one pass over the lake."""
        built = self.job.build_many(cutoffs, version)
        frames = {}
        for cut, (table, owner) in built.items():
            done = outcomes(self.job.lake, owner, target, as_of=cut, version=version)
            frames[cut] = _Frame(cut, append_labels(table, target, done), owner)
        return frames

    # -- backtest ------------------------------------------------------------------------------

    def evaluate(self, target: Target, *, as_of: datetime) -> Evaluation:
        """Train as ``train`` at ``as_of`` would, score the users as of ``as_of``, and compare
        with what they did in (as_of, as_of + H], beside the baseline."""
        version = self.job.lake.version()
        self.job.require_observed(as_of + timedelta(days=target.horizon_days), version)
        run = self.train(target, as_of=as_of, register=False)
        model = run.model
        frame = self._frame(target, as_of, version)
        if frame.table.num_rows == 0:
            raise ValidationError("no profile existed at the cut-off", code="no_training_users")
        scores, cold = serve_scores(model, frame.table)
        truth = labels_of(frame.table, target)
        fitted = baseline_scores(self.job, target, as_of, frame.owner, version, frame.ids)
        baseline, parameters, customers = fitted.scores, fitted.parameters, fitted.customers
        result: dict[str, Any] = {
            "target": target.name,
            "targetKey": target.key,
            "describe": target.describe(),
            "asOf": format_timestamp(as_of),
            "horizonDays": target.horizon_days,
            "event": target.event,
            "users": frame.table.num_rows,
            "coldStartUsers": int(cold.sum()),
            "kind": model.kind,
            "validation": run.report["validation"],
            "model": _metrics(target, truth, scores),
            "baseline": _metrics(target, truth, baseline) if baseline is not None else None,
            "baselineParameters": parameters,
        }
        if customers.any():
            subset = {name: values[customers] for name, values in truth.items()}
            result["customers"] = {
                "users": int(customers.sum()),
                "model": _metrics(target, subset, _subset(scores, customers)),
                "baseline": (
                    _metrics(target, subset, _subset(baseline, customers))
                    if baseline is not None
                    else None
                ),
            }
        actual = truth["churn"] if target.name == "churn" else truth["revenue"]
        curves: dict[str, Any] = {
            "model": {"gains": cumulative_gains(actual, primary_score(target, scores))}
        }
        if baseline is not None:
            curves["baseline"] = {
                "gains": cumulative_gains(actual, primary_score(target, baseline))
            }
        return Evaluation(result, curves)

    # -- feature tables ------------------------------------------------------------------------

    def feature_table(self, as_of: datetime, *, output: Path | None = None) -> FeatureResult:
        """Every user's features as of ``as_of`` (``FeatureJob.features_as_of``) with each
        served model's predictions from them: ``predictions__churn__probability``,
        ``predictions__clv__expected_revenue`` and ``…__expected_orders``, and
        ``predictions__<target>__model_version``. Checked and recorded like any feature table
        (its lineage names the versions)."""
        table, _, version = self.job.build(as_of)
        served: dict[str, int] = {}
        for target_name, model_id in sorted(
            (self.registry.served_ids() if self.registry is not None else {}).items()
        ):
            assert self.registry is not None
            model_version = self.registry.get(model_id)
            model = self.registry.load(model_version)
            scores, _ = serve_scores(model, table)
            for name in ("churn_probability", "expected_revenue", "expected_orders"):
                values = getattr(scores, name)
                if values is not None:
                    column = name.removeprefix("churn_")
                    table = table.append_column(
                        f"predictions__{target_name}__{column}", pa.array(values, pa.float64())
                    )
            table = table.append_column(
                f"predictions__{target_name}__model_version",
                pa.array([model_version.number] * table.num_rows, pa.int32()),
            )
            served[target_name] = model_version.id
        return self.job.publish(
            "feature_table",
            table,
            version=version,
            as_of=as_of,
            time_end=as_of,
            parameters={"predictions": served} if served else {},
            output=output,
        )

    # -- batch scoring -------------------------------------------------------------------------

    def score(self, target: Target, *, as_of: datetime | None = None) -> pa.Table:
        """Every profile as of ``as_of`` scored by the served version of exactly ``target``,
        beside the baseline: ``user_id``, the prediction columns, ``baseline_…`` and
        ``model_version`` (one row per user).

        Raises ``NotFound`` (``no_served_model``) naming the ``train`` command to run when no
        version of the target is served."""
        version_row = self.registry.served_for(target) if self.registry is not None else None
        if version_row is None or self.registry is None:
            event = f" --event '{target.event}'" if target.event else ""
            raise NotFound(
                f"no {target.key} model is served: run `personify predict train {target.name} "
                f"--horizon-days {target.horizon_days:g}{event}` first",
                code="no_served_model",
            )
        model = self.registry.load(version_row)
        as_of = as_of or self.default_as_of()
        lake_version = self.job.lake.version()
        table, owner, lake_version = self.job.build(as_of, lake_version)
        ids = [str(v) for v in table.column("user_id").to_pylist()]
        scores, cold = serve_scores(model, table)
        baseline = baseline_scores(self.job, target, as_of, owner, lake_version, ids).scores
        columns: dict[str, Any] = {"user_id": pa.array(ids, pa.string())}
        names = (
            ["churn_probability"]
            if target.name == "churn"
            else ["expected_revenue", "expected_orders"]
        )
        for name in names:
            columns[name] = pa.array(getattr(scores, name), pa.float64())
        for name in names:
            values = None if baseline is None else getattr(baseline, name)
            columns[f"baseline_{name}"] = (
                pa.nulls(len(ids), pa.float64())
                if values is None
                else pa.array(values, pa.float64())
            )
        columns["cold_start"] = pa.array(cold, pa.bool_())
        columns["model_version"] = pa.array([version_row.number] * len(ids), pa.int32())
        return pa.table(columns)


def primary_score(target: Target, scores: Scores) -> Matrix:
    """The score a target is monitored by: churn probability, or expected revenue."""
    value = scores.churn_probability if target.name == "churn" else scores.expected_revenue
    return np.asarray(value, dtype=np.float64)


def monitoring_reference(model: Model, trained_on: Matrix, scored: Matrix) -> dict[str, Any]:
    """What drift is measured against (``personify.predict.monitor``): each feature's bins
    over the rows the served model was fit on, and the bins of its scores on the users as of
    its cut-off."""
    return {
        "features": {
            name: reference_bins(trained_on[:, j]) for j, name in enumerate(model.spec.names)
        },
        "score": reference_bins(primary_score(model.target, model.predict(scored))),
        "rows": len(trained_on),
    }


@dataclass(slots=True)
class Baseline:
    """The baseline's predictions for some users (None when it could not be fitted), its
    fitted parameters or why it has none, and which users had a transaction by the cut-off
    (its own population)."""

    scores: Scores | None
    parameters: dict[str, Any]
    customers: np.ndarray[Any, np.dtype[np.bool_]]


def baseline_scores(
    job: FeatureJob,
    target: Target,
    as_of: datetime,
    owner: Mapping[str, str],
    version: int | None,
    ids: Sequence[str],
) -> Baseline:
    """The baseline for ``ids`` at ``as_of`` (``Baseline``). Churn reads the qualifying
    events, at most one a day, as BG/NBD's transactions; CLV reads the orders and their
    values (Gamma-Gamma)."""
    churn = target.name == "churn"
    customers, summary = order_summaries(
        job.lake,
        owner,
        as_of=as_of,
        version=version,
        order_event=target.qualifying_event if churn else target.order_event,
        per_day=churn,
    )
    where = {pid: i for i, pid in enumerate(customers)}
    rows = np.array([where.get(pid, -1) for pid in ids], dtype=np.int64)
    known = rows >= 0
    if len(customers) < MIN_BASELINE_CUSTOMERS:
        return Baseline(None, {"error": "TOO_FEW_CUSTOMERS", "customers": len(customers)}, known)
    try:
        bg = fit_bg_nbd(summary)
    except ValidationError as exc:
        return Baseline(None, {"error": exc.code, "message": str(exc)}, known)
    parameters: dict[str, Any] = {"customers": len(customers), "bgNbd": bg.to_dict()}
    x, t_x, age, monetary = (
        _pick(summary.frequency, rows),
        _pick(summary.recency, rows),
        _pick(summary.age, rows),
        _pick(summary.monetary, rows),
    )
    days = target.horizon_days
    if churn:
        return Baseline(Scores(churn_probability=_churn(bg, days, x, t_x, age)), parameters, known)
    gamma: GammaGamma | None = None
    if (summary.frequency > 0).sum() >= MIN_BASELINE_CUSTOMERS:
        try:
            gamma = fit_gamma_gamma(summary)
            parameters["gammaGamma"] = gamma.to_dict()
        except ValidationError as exc:
            parameters["gammaGamma"] = {"error": exc.code}
    orders = np.where(known, bg.conditional_expected_purchases(days, x, t_x, age), 0.0)
    if gamma is not None:
        value = gamma.expected_order_value(x, monetary)
    else:
        value = np.full(len(ids), float(np.mean(summary.monetary[summary.frequency > 0] or [0])))
    revenue = np.where(known, orders * np.nan_to_num(value), 0.0)
    return Baseline(Scores(expected_revenue=revenue, expected_orders=orders), parameters, known)


def _churn(bg: BgNbd, days: float, x: Matrix, t_x: Matrix, age: Matrix) -> Matrix:
    return np.clip(np.asarray(bg.churn_probability(days, x, t_x, age), dtype=np.float64), 0, 1)


def _pick(values: Matrix, rows: np.ndarray[Any, Any]) -> Matrix:
    """``values[rows]``, with 0 where ``rows`` is -1 (a user with no transaction: age 0)."""
    out = np.zeros(len(rows))
    known = rows >= 0
    out[known] = values[rows[known]]
    return out


def _after(cut: datetime, oldest: datetime | None) -> bool:
    """Whether a cut-off falls after the lake's first arrival (a frame before it is empty)."""
    return oldest is not None and cut > oldest


def _chain(
    frames: Mapping[datetime, _Frame], cuts: Sequence[datetime], oldest: datetime | None
) -> list[_Frame]:
    """The frames of ``cuts`` in order, up to the first before the lake's start or with fewer
    than ``MIN_WINDOW_USERS`` users."""
    chain = []
    for cut in cuts:
        frame = frames.get(cut)
        if not _after(cut, oldest) or frame is None or frame.table.num_rows < MIN_WINDOW_USERS:
            break
        chain.append(frame)
    return chain


def _pool(
    spec: FeatureSpec, target: Target, frames: Sequence[_Frame]
) -> tuple[Matrix, dict[str, Matrix]]:
    """The frames' features and labels, one after another."""
    x = np.vstack([spec.matrix(f.table) for f in frames])
    labels = [labels_of(f.table, target) for f in frames]
    return x, {name: np.concatenate([part[name] for part in labels]) for name in labels[0]}


def _held_out(ids: Sequence[str]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """A stable fifth of the users (by a hash of their id), the same on every run."""
    cut = int(HELD_OUT_SHARE * 2**32)
    return np.array(
        [int.from_bytes(hashlib.sha256(i.encode()).digest()[:4], "big") < cut for i in ids],
        dtype=bool,
    )


def _subset(scores: Scores, mask: np.ndarray[Any, Any]) -> Scores:
    return Scores(
        *(
            None if c is None else c[mask]
            for c in (scores.churn_probability, scores.expected_revenue, scores.expected_orders)
        )
    )


def _metrics(target: Target, truth: Mapping[str, Matrix], scores: Scores) -> dict[str, Any]:
    if target.name == "churn":
        return churn_metrics(truth["churn"], np.asarray(scores.churn_probability))
    return clv_metrics(
        truth["revenue"],
        np.asarray(scores.expected_revenue),
        truth["orders"],
        np.asarray(scores.expected_orders),
    )


def _gate(target: Target, report: Mapping[str, Any]) -> dict[str, Any]:
    """Promote only a version that beats the baseline and the served version on the
    validation metric: ROC-AUC (higher is better) for churn, revenue MAE (lower) for CLV."""
    metric, higher = ("roc_auc", True) if target.name == "churn" else ("revenue_mae", False)

    def value(metrics: Mapping[str, Any] | None) -> float | None:
        if not metrics:
            return None
        number = metrics.get(metric)
        return float(number) if isinstance(number, int | float) and math.isfinite(number) else None

    candidate = value(report["model"])
    baseline = value(report.get("baseline"))
    current = value((report.get("current") or {}).get("metrics"))

    def beats(other: float | None) -> bool:
        if other is None:
            return True
        if candidate is None:
            return False
        return candidate > other if higher else candidate < other

    reasons = []
    if candidate is None:
        reasons.append(f"its validation {metric} could not be computed")
    if not beats(baseline):
        reasons.append(f"it does not beat the baseline's {metric}")
    served = report.get("current")
    if served and not beats(current):
        reasons.append(f"it does not beat the served version's {metric}")
    if served and served.get("asOf", "") > report["asOf"]:
        # the served version knew more; on this older split it may only look worse
        reasons.append(f"it is trained as of {report['asOf']}, before the served version")
    return {
        "metric": metric,
        "higherIsBetter": higher,
        "candidate": candidate,
        "baseline": baseline,
        "current": current,
        "decision": "kept" if reasons else "promoted",
        "reasons": reasons,
    }
