"""Learned churn and lifetime-value models: gradient-boosted trees (LightGBM) on the
point-in-time feature tables (``personify.predict.features``), with the reasons behind each
prediction.

**Inputs.** A model reads the feature table's numeric columns, a few derived ones
(``age_days``: days since the profile was first seen) and its low-cardinality text columns
(plan, country, device) as categories with a vocabulary fixed at training. The same reading
serves one profile in the worker (``FeatureSpec.row``), from the document the API shows, so a
model sees in real time exactly what it was trained on.

**Models.**

* ``churn``: a binary LightGBM model, calibrated by isotonic regression on the validation
  period's predictions (Zadrozny & Elkan 2002), so a probability of 0.3 means three users in
  ten churn.
* ``clv``: the better on validation revenue MAE of a *two-part* model (the probability of any
  order times the expected revenue of a buyer) and a *Tweedie* model of revenue (compound
  Poisson-Gamma, variance power 1.5), beside a Poisson model of the number of orders.

**Reasons.** LightGBM's ``pred_contrib`` splits each prediction (in log-odds, or log revenue)
into one contribution per feature (TreeSHAP, Lundberg et al. 2018); the largest ones are
worded for a marketer ("orders in the last 30 days: 0 (raises churn risk)").

**Files.** A model is saved as JSON: LightGBM's own text format for the trees, plain arrays
for the calibration. Nothing is ever unpickled, and ``load_model`` checks the file's SHA-256
before it reads anything.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import lightgbm as lgb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.isotonic import IsotonicRegression

from personify.errors import ValidationError
from personify.predict.targets import Target

__all__ = [
    "FORMAT",
    "FeatureSpec",
    "Fitted",
    "Model",
    "Scores",
    "choose_features",
    "describe_feature",
    "dump_model",
    "fit_model",
    "load_model",
]

FORMAT = "personify-model/1"
Matrix = np.ndarray[Any, np.dtype[np.float64]]
# a set of rows: their features, and their labels by name (``churn``; ``revenue``, ``orders``)
Pair = tuple[Matrix, Mapping[str, Matrix]]

# the derived column and what it is computed from
AGE = "age_days"
_FIRST_SEEN = "first_seen"
_MS_PER_DAY = 86_400_000.0
# columns that are not features: ids, the cut-off, labels, JSON sections, moments in time
_NOT_FEATURES = frozenset(
    {"user_id", "as_of", "affinities", "last_events", "first_seen", "last_seen"}
)
_MOMENT = re.compile(r"(_at(__all)?|_ms|^context__first_touch|^context__last_touch)$")
_MAX_VOCABULARY = 30
_MIN_CATEGORY_SHARE = 0.01
_MIN_CATEGORY_USERS = 5

# gradient boosting: small trees, early stopping on the validation set, deterministic
_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 0,
}
# predictions run on one thread: the worker scores a batch's profiles (hundreds to thousands
# of rows, microseconds each), where waking an OpenMP team costs more than it saves
_PREDICT: dict[str, Any] = {"num_threads": 1}
MAX_ROUNDS = 600
EARLY_STOPPING_ROUNDS = 40
# a buyer's revenue needs this many buyers to learn; fewer gives their mean
_MIN_BUYERS = 50
TWEEDIE_VARIANCE_POWER = 1.5
# each booster's objective, by its name in a model
_OBJECTIVES: dict[str, dict[str, Any]] = {
    "churn": {"objective": "binary"},
    "orders": {"objective": "poisson"},
    "buyer": {"objective": "binary"},
    "spend": {"objective": "regression", "min_data_in_leaf": 10},
    "revenue": {"objective": "tweedie", "tweedie_variance_power": TWEEDIE_VARIANCE_POWER},
}


# -- features --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which columns a model reads: numbers, then categories with their vocabularies (a value
    outside it is the extra code ``len(vocabulary)``, "other")."""

    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def names(self) -> list[str]:
        """The matrix's columns, in order."""
        return [*self.numeric, *(name for name, _ in self.categorical)]

    @property
    def categorical_indices(self) -> list[int]:
        """The matrix columns that hold category codes."""
        start = len(self.numeric)
        return list(range(start, start + len(self.categorical)))

    def matrix(self, table: pa.Table) -> Matrix:
        """The model's input for every row of a feature table (NaN: missing)."""
        rows = table.num_rows
        out = np.full((rows, len(self.numeric) + len(self.categorical)), np.nan)
        for j, name in enumerate(self.numeric):
            if name == AGE:
                out[:, j] = _age_column(table)
            elif name in table.column_names:
                column = table.column(name)
                if pa.types.is_boolean(column.type):
                    column = column.cast(pa.int8())
                out[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        for k, (name, vocabulary) in enumerate(self.categorical):
            j = len(self.numeric) + k
            if name not in table.column_names:
                continue
            codes = {value: float(c) for c, value in enumerate(vocabulary)}
            other = float(len(vocabulary))
            out[:, j] = [
                np.nan if v is None else codes.get(str(v), other)
                for v in table.column(name).to_pylist()
            ]
        return out

    def row(self, values: Mapping[str, Any], as_of_ms: int) -> Matrix:
        """One profile's input from its flattened document (``flatten_document``) at
        ``as_of_ms``, as ``matrix`` reads a feature table's row."""
        return self.rows([values], as_of_ms)

    def rows(self, documents: Sequence[Mapping[str, Any]], as_of_ms: int) -> Matrix:
        """Profiles' inputs from their flattened documents at ``as_of_ms``, a column at a
        time (the worker's batches)."""
        out = np.full((len(documents), len(self.numeric) + len(self.categorical)), np.nan)
        for j, name in enumerate(self.numeric):
            if name == AGE:
                out[:, j] = [_age(d.get(_FIRST_SEEN), as_of_ms) for d in documents]
            else:
                out[:, j] = [_number(d.get(name)) for d in documents]
        for k, (name, vocabulary) in enumerate(self.categorical):
            codes = {value: float(c) for c, value in enumerate(vocabulary)}
            other = float(len(vocabulary))
            column = [d.get(name) for d in documents]
            out[:, len(self.numeric) + k] = [
                math.nan if v is None else codes.get(str(v), other) for v in column
            ]
        return out

    def value_text(self, j: int, value: float) -> str:
        """A matrix value in words: a number, a category, or "none"."""
        if math.isnan(value):
            return "none"
        if j >= len(self.numeric):
            vocabulary = self.categorical[j - len(self.numeric)][1]
            code = int(value)
            return vocabulary[code] if code < len(vocabulary) else "other"
        if float(value).is_integer():
            return str(int(value))
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON."""
        return {
            "numeric": list(self.numeric),
            "categorical": {name: list(vocabulary) for name, vocabulary in self.categorical},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """A spec read back from ``to_dict``."""
        return cls(
            tuple(data["numeric"]),
            tuple((name, tuple(v)) for name, v in data["categorical"].items()),
        )


_NUMBERS = (int, float, bool)


def _number(value: Any) -> float:
    # exact types first: the documents hold plain ints, floats, bools and None
    if type(value) in _NUMBERS:
        number = float(value)
        return number if math.isfinite(number) else math.nan
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else math.nan
    return math.nan


def _age(first_seen: Any, as_of_ms: int) -> float:
    if not isinstance(first_seen, str):
        return math.nan
    try:
        moment = datetime.fromisoformat(first_seen)
    except ValueError:
        return math.nan
    return max(0.0, (as_of_ms - moment.timestamp() * 1000.0) / _MS_PER_DAY)


def _age_column(table: pa.Table) -> Matrix:
    if _FIRST_SEEN not in table.column_names:
        return np.full(table.num_rows, np.nan)
    first = pc.strptime(
        pc.utf8_slice_codeunits(table.column(_FIRST_SEEN), 0, 19),
        format="%Y-%m-%dT%H:%M:%S",
        unit="ms",
        error_is_null=True,
    )
    first_ms = first.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    # a cut-off may carry microseconds: read it exactly, in milliseconds as a float
    as_of_ms = (
        table.column("as_of").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(False)
    ).astype(np.float64) / 1000.0
    return np.asarray(np.maximum(0.0, (as_of_ms - first_ms) / _MS_PER_DAY), dtype=np.float64)


def choose_features(table: pa.Table) -> FeatureSpec:
    """The columns of a feature table a model should read: every numeric one but moments in
    time and labels, ``age_days``, and text columns whose common values (each held by 1 % of
    users, at least five) number 30 or fewer."""
    numeric: list[str] = []
    categorical: list[tuple[str, tuple[str, ...]]] = []
    rows = max(1, table.num_rows)
    for f in table.schema:
        name = f.name
        # labels, and the predictions a feature table may carry, are never a model's input
        if (
            name in _NOT_FEATURES
            or name.startswith(("label_", "predictions__"))
            or _MOMENT.search(name)
        ):
            continue
        if (
            pa.types.is_integer(f.type)
            or pa.types.is_floating(f.type)
            or pa.types.is_boolean(f.type)
        ):
            numeric.append(name)
        elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            counts = pc.value_counts(table.column(name).drop_null()).to_pylist()
            floor = max(_MIN_CATEGORY_USERS, _MIN_CATEGORY_SHARE * rows)
            common = sorted(
                ((c["counts"], c["values"]) for c in counts if c["counts"] >= floor),
                key=lambda pair: (-pair[0], pair[1]),
            )
            if 0 < len(common) <= _MAX_VOCABULARY and len(counts) <= 10 * _MAX_VOCABULARY:
                categorical.append((name, tuple(value for _, value in common)))
    if _FIRST_SEEN in table.column_names:
        numeric.append(AGE)
    return FeatureSpec(tuple(numeric), tuple(categorical))


_WINDOW = re.compile(r"^(.*)__(\d+)d$")
_NAMED: dict[str, str] = {
    AGE: "days since first seen",
    "recency_days": "days since the last activity",
    "events_total": "events in total",
    "average_order_value__all": "average order value",
    "days_since_last_order__all": "days since the last order",
    "sessions__count": "sessions in total",
    "sessions__average_duration_s": "average session length (s)",
    "sessions__events_per_session": "events per session",
    "sessions__pages_per_session": "pages per session",
}


def _window_words(days: str) -> str:
    return "in the last day" if days == "1" else f"in the last {days} days"


def describe_feature(name: str) -> str:
    """A feature column in words a marketer reads (``orders__30d`` -> "orders in the last 30
    days", ``event_counts__product_viewed__7d`` -> "'product viewed' events in the last 7
    days")."""
    if name in _NAMED:
        return _NAMED[name]
    if name.startswith("sessions__count_") and name.endswith("d"):
        return f"sessions {_window_words(name.removeprefix('sessions__count_')[:-1])}"
    if name.startswith("traits__"):
        return f"trait {name.removeprefix('traits__').replace('__', '.')}"
    if name.startswith("context__last__"):
        return f"last {name.removeprefix('context__last__').replace('_', ' ')}"
    base, when = name, "in total"
    if name.endswith("__all"):
        base = name.removesuffix("__all")
    elif match := _WINDOW.match(name):
        base, when = match.group(1), _window_words(match.group(2))
    if base.startswith("event_counts__"):
        event = base.removeprefix("event_counts__").replace("_", " ")
        return f"'{event}' events {when}"
    return f"{base.replace('__', ' ').replace('_', ' ')} {when}"


# -- boosting --------------------------------------------------------------------------------


def _dataset(x: Matrix, y: Matrix, spec: FeatureSpec) -> lgb.Dataset:
    return lgb.Dataset(
        x,
        y,
        feature_name=[f"f{j}" for j in range(x.shape[1])],
        categorical_feature=spec.categorical_indices or "auto",
        free_raw_data=False,
        params={"verbose": -1},
    )


def _boost(
    objective: Mapping[str, Any],
    spec: FeatureSpec,
    fit: tuple[Matrix, Matrix],
    valid: tuple[Matrix, Matrix] | None,
    rounds: int | None = None,
) -> lgb.Booster:
    """A booster: early-stopped on ``valid`` when given, else ``rounds`` rounds."""
    params = {**_PARAMS, **objective}
    train = _dataset(*fit, spec)
    if valid is None:
        return lgb.train(params, train, num_boost_round=max(1, rounds or 1))
    check = lgb.Dataset(valid[0], valid[1], reference=train, free_raw_data=False)
    return lgb.train(
        params,
        train,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[check],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )


def _rounds(booster: lgb.Booster) -> int:
    return max(1, int(booster.best_iteration or booster.current_iteration()))


@dataclass(slots=True)
class Scores:
    """A model's predictions for some users: churn probability, or revenue and orders."""

    churn_probability: Matrix | None = None
    expected_revenue: Matrix | None = None
    expected_orders: Matrix | None = None


@dataclass(slots=True)
class Model:
    """A trained model of one target: its boosters, calibration and the population prior."""

    target: Target
    spec: FeatureSpec
    kind: str  # "churn", "two_part" or "tweedie"
    boosters: dict[str, lgb.Booster]
    calibration: tuple[list[float], list[float]] | None = None
    # the population's values, for users with too little history (cold start)
    prior: dict[str, float] = field(default_factory=dict)
    min_events: int = 2
    # a buyer's mean revenue when there were too few buyers to learn it
    buyer_revenue: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def predict(self, x: Matrix) -> Scores:
        """Scores for the rows of ``x`` (``FeatureSpec.matrix`` or ``row``)."""
        if self.kind == "churn":
            raw = np.asarray(self.boosters["churn"].predict(x, **_PREDICT), dtype=np.float64)
            if self.calibration is not None:
                raw = np.interp(raw, self.calibration[0], self.calibration[1])
            return Scores(churn_probability=np.clip(raw, 0.0, 1.0))
        orders = np.asarray(self.boosters["orders"].predict(x, **_PREDICT), dtype=np.float64)
        if self.kind == "tweedie":
            revenue = np.asarray(self.boosters["revenue"].predict(x, **_PREDICT), dtype=np.float64)
        else:
            buys = np.asarray(self.boosters["buyer"].predict(x, **_PREDICT), dtype=np.float64)
            if "spend" in self.boosters:
                spend = np.asarray(self.boosters["spend"].predict(x, **_PREDICT), dtype=np.float64)
            else:
                spend = np.full(len(x), self.buyer_revenue or 0.0)
            revenue = buys * np.maximum(spend, 0.0)
        return Scores(expected_revenue=np.maximum(revenue, 0.0), expected_orders=orders)

    def contributions(self, x: Matrix) -> Matrix:
        """Each feature's contribution to each row's prediction (TreeSHAP; the last column is
        the expected value), from the booster that drives the target."""
        name = {"churn": "churn", "two_part": "buyer", "tweedie": "revenue"}[self.kind]
        return np.asarray(
            self.boosters[name].predict(x, pred_contrib=True, **_PREDICT), dtype=np.float64
        )

    def reasons(
        self, x: Matrix, contributions: Matrix, *, top: int = 3
    ) -> list[list[dict[str, Any]]]:
        """The ``top`` largest contributions of each row, worded (module docstring)."""
        what = "churn risk" if self.kind == "churn" else "expected value"
        names = self.spec.names
        out: list[list[dict[str, Any]]] = []
        for i in range(len(x)):
            effects = contributions[i, : len(names)]
            order = np.argsort(-np.abs(effects), kind="stable")[:top]
            row: list[dict[str, Any]] = []
            for j in order.tolist():
                effect = float(effects[j])
                if effect == 0.0:
                    break
                label = describe_feature(names[j])
                value = self.spec.value_text(j, float(x[i, j]))
                direction = "raises" if effect > 0 else "lowers"
                row.append(
                    {
                        "feature": names[j],
                        "value": value,
                        "effect": round(effect, 4),
                        "text": f"{label}: {value} ({direction} {what})",
                    }
                )
            out.append(row)
        return out

    def is_cold(self, events_total: float) -> bool:
        """Whether a profile has too little history for the model (it gets the prior)."""
        return not events_total >= self.min_events


@dataclass(slots=True)
class Fitted:
    """A model and what its validation showed: the validation predictions, the rounds."""

    model: Model
    validation: Scores
    rounds: dict[str, int]


def _calibrate(raw: Matrix, labels: Matrix) -> tuple[list[float], list[float]] | None:
    if len(raw) < 2 or len(np.unique(labels)) < 2:
        return None
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, labels)
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def _mae(a: Matrix, b: Matrix) -> float:
    return float(np.mean(np.abs(a - b))) if len(a) else math.inf


def fit_model(
    target: Target,
    spec: FeatureSpec,
    fit: Pair,
    valid: Pair,
    refit: Pair | None = None,
) -> Fitted:
    """Fit ``target`` on ``fit`` early-stopped on ``valid`` (features and labels: ``churn``;
    or ``revenue`` and ``orders``), calibrate on ``valid``'s predictions, then, when ``refit``
    is given, fit the served boosters again on it with the rounds validation chose.

    Raises ``ValidationError`` (``no_training_users``) when either set is empty."""
    if len(fit[0]) == 0 or len(valid[0]) == 0:
        raise ValidationError(
            "there are no users to train or validate on at this cut-off",
            code="no_training_users",
        )
    if target.name == "churn":
        return _fit_churn(target, spec, fit, valid, refit)
    return _fit_clv(target, spec, fit, valid, refit)


def _fit_churn(
    target: Target,
    spec: FeatureSpec,
    fit: Pair,
    valid: Pair,
    refit: Pair | None,
) -> Fitted:
    objective = _OBJECTIVES["churn"]
    y_fit, y_valid = fit[1]["churn"], valid[1]["churn"]
    booster = _boost(objective, spec, (fit[0], y_fit), (valid[0], y_valid))
    rounds = _rounds(booster)
    raw = np.asarray(booster.predict(valid[0], num_iteration=rounds), dtype=np.float64)
    calibration = _calibrate(raw, y_valid)
    served = booster
    if refit is not None:
        served = _boost(objective, spec, (refit[0], refit[1]["churn"]), None, rounds)
    prior_labels = (refit or fit)[1]["churn"]
    model = Model(
        target,
        spec,
        "churn",
        {"churn": _trimmed(served, rounds)},
        calibration,
        prior={"churn_probability": float(np.mean(prior_labels))},
    )
    validated = raw if calibration is None else np.interp(raw, *calibration)
    return Fitted(model, Scores(churn_probability=validated), {"churn": rounds})


def _trimmed(booster: lgb.Booster, rounds: int) -> lgb.Booster:
    """The booster with only its first ``rounds`` trees (early stopping's best)."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))


def _fit_clv(
    target: Target,
    spec: FeatureSpec,
    fit: Pair,
    valid: Pair,
    refit: Pair | None,
) -> Fitted:
    x_fit, x_valid = fit[0], valid[0]
    revenue_fit, revenue_valid = fit[1]["revenue"], valid[1]["revenue"]
    orders_fit, orders_valid = fit[1]["orders"], valid[1]["orders"]
    rounds: dict[str, int] = {}
    boosters: dict[str, lgb.Booster] = {}

    orders = _boost(_OBJECTIVES["orders"], spec, (x_fit, orders_fit), (x_valid, orders_valid))
    rounds["orders"] = _rounds(orders)
    boosters["orders"] = orders

    # the two-part model: P(any order) x E[revenue | an order]
    bought_fit, bought_valid = (revenue_fit > 0).astype(np.float64), (revenue_valid > 0)
    buyer = _boost(
        _OBJECTIVES["buyer"],
        spec,
        (x_fit, bought_fit),
        (x_valid, bought_valid.astype(np.float64)),
    )
    rounds["buyer"] = _rounds(buyer)
    boosters["buyer"] = buyer
    buyer_revenue: float | None = None
    buyers_fit = revenue_fit > 0
    if buyers_fit.sum() >= _MIN_BUYERS and bought_valid.sum() >= 1:
        spend = _boost(
            _OBJECTIVES["spend"],
            spec,
            (x_fit[buyers_fit], revenue_fit[buyers_fit]),
            (x_valid[bought_valid], revenue_valid[bought_valid]),
        )
        rounds["spend"] = _rounds(spend)
        boosters["spend"] = spend
    else:
        buyer_revenue = float(revenue_fit[buyers_fit].mean()) if buyers_fit.any() else 0.0
    two_part = Model(target, spec, "two_part", dict(boosters), buyer_revenue=buyer_revenue)
    two_part_valid = two_part.predict(x_valid)

    tweedie = _boost(
        _OBJECTIVES["revenue"],
        spec,
        (x_fit, revenue_fit),
        (x_valid, revenue_valid),
    )
    rounds["revenue"] = _rounds(tweedie)
    tweedie_model = Model(target, spec, "tweedie", {"orders": orders, "revenue": tweedie})
    tweedie_valid = tweedie_model.predict(x_valid)

    two_part_mae = _mae(np.asarray(two_part_valid.expected_revenue), revenue_valid)
    tweedie_mae = _mae(np.asarray(tweedie_valid.expected_revenue), revenue_valid)
    chosen, validation = (
        (two_part, two_part_valid)
        if two_part_mae <= tweedie_mae
        else (tweedie_model, tweedie_valid)
    )
    names = ("orders", "buyer", "spend") if chosen.kind == "two_part" else ("orders", "revenue")
    served: dict[str, lgb.Booster] = {}
    for name in names:
        if name not in chosen.boosters:
            continue
        if refit is None:
            served[name] = _trimmed(chosen.boosters[name], rounds[name])
            continue
        x_refit, labels = refit
        y = {
            "orders": labels["orders"],
            "buyer": (labels["revenue"] > 0).astype(np.float64),
            "revenue": labels["revenue"],
        }
        objective = _OBJECTIVES[name]
        if name == "spend":
            buyers = labels["revenue"] > 0
            served[name] = _boost(
                objective, spec, (x_refit[buyers], labels["revenue"][buyers]), None, rounds[name]
            )
        else:
            served[name] = _boost(objective, spec, (x_refit, y[name]), None, rounds[name])
    prior_labels = (refit or fit)[1]
    model = Model(
        target,
        spec,
        chosen.kind,
        served,
        prior={
            "expected_revenue": float(np.mean(prior_labels["revenue"])),
            "expected_orders": float(np.mean(prior_labels["orders"])),
        },
        buyer_revenue=chosen.buyer_revenue,
        details={"validation_mae": {"two_part": two_part_mae, "tweedie": tweedie_mae}},
    )
    return Fitted(model, validation, {n: rounds[n] for n in names if n in rounds})


# -- files -----------------------------------------------------------------------------------


def dump_model(model: Model) -> bytes:
    """The model as a JSON file (module docstring: no pickle)."""
    document = {
        "format": FORMAT,
        "target": {
            "name": model.target.name,
            "horizonDays": model.target.horizon_days,
            "event": model.target.event,
        },
        "kind": model.kind,
        "features": model.spec.to_dict(),
        "boosters": {name: b.model_to_string() for name, b in sorted(model.boosters.items())},
        "calibration": (
            None
            if model.calibration is None
            else {"x": model.calibration[0], "y": model.calibration[1]}
        ),
        "prior": model.prior,
        "minEvents": model.min_events,
        "buyerRevenue": model.buyer_revenue,
        "details": model.details,
    }
    return msgspec.json.encode(document)


def checksum(data: bytes) -> str:
    """The SHA-256 of a model file, as hex."""
    return hashlib.sha256(data).hexdigest()


def load_model(data: bytes, sha256: str) -> Model:
    """A model read back from ``dump_model``'s bytes, after checking their SHA-256.

    Raises ``ValidationError`` (``model_checksum_mismatch``, ``invalid_model_file``) when the
    file is not the one the registry recorded or not a model file."""
    if checksum(data) != sha256:
        raise ValidationError(
            "the model file's SHA-256 does not match the registry's: it was changed or "
            "replaced; train a new version",
            code="model_checksum_mismatch",
        )
    try:
        document = msgspec.json.decode(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        t = document["target"]
        calibration = document["calibration"]
        return Model(
            Target(t["name"], float(t["horizonDays"]), t["event"]),
            FeatureSpec.from_dict(document["features"]),
            document["kind"],
            {name: lgb.Booster(model_str=text) for name, text in document["boosters"].items()},
            None if calibration is None else (calibration["x"], calibration["y"]),
            prior=document["prior"],
            min_events=int(document["minEvents"]),
            buyer_revenue=document["buyerRevenue"],
            details=dict(document.get("details") or {}),
        )
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
        raise ValidationError(
            f"the model file cannot be read: {exc}", code="invalid_model_file"
        ) from exc


def labels_of(table: pa.Table, target: Target) -> dict[str, Matrix]:
    """A training frame's label columns as arrays: ``churn``, or ``revenue`` and ``orders``."""
    if target.name == "churn":
        return {"churn": _floats(table, "label_churn")}
    return {"revenue": _floats(table, "label_clv"), "orders": _floats(table, "label_orders")}


def _floats(table: pa.Table, name: str) -> Matrix:
    return np.asarray(
        table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def take(
    pair: Pair, rows: Sequence[int] | np.ndarray[Any, Any]
) -> tuple[Matrix, dict[str, Matrix]]:
    """Some rows of a (features, labels) pair."""
    index = np.asarray(rows, dtype=np.int64)
    return pair[0][index], {name: values[index] for name, values in pair[1].items()}
