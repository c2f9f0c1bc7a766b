"""How good a churn or lifetime-value prediction is, measured against what users then did.

The same functions score the learned model and the BG/NBD baseline, so ``personify predict
evaluate`` can print both side by side and ``personify.predict.report`` can draw them.

House style: degenerate data never raises. No users, one class only, a constant prediction:
the result carries an ``error`` code (``NO_USERS``, ``ONE_CLASS``, ``CONSTANT``) and ``None``
for the numbers that cannot be computed. Only a caller's mistake raises ``ValueError``:
arrays of different lengths, non-finite predictions, probabilities outside [0, 1], labels
other than 0 and 1.

Every result is plain JSON (Python ``int``, ``float``, ``None``, lists and dicts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

__all__ = [
    "PROBABILITY_CLIP",
    "PSI_FLOOR",
    "churn_metrics",
    "clv_metrics",
    "cumulative_gains",
    "population_stability_index",
    "reference_bins",
    "reliability_curve",
    "stability_against",
]

Vector = np.ndarray[Any, np.dtype[np.float64]]

# log loss is infinite for a confident wrong answer; clipping keeps one such user from
# swamping the mean (the bound scikit-learn used before it chose its own per dtype)
PROBABILITY_CLIP = 1e-15
# the smallest share a PSI bin counts with, so an empty bin adds a large but finite term
PSI_FLOOR = 1e-4


def _vector(name: str, values: Any) -> Vector:
    """``values`` as a one-dimensional float array; anything else is the caller's mistake."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _same_length(**arrays: Vector) -> int:
    """The common length of ``arrays``; a ``ValueError`` naming each length when they differ."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"arrays must have the same length, got {described}")
    return next(iter(lengths.values()))


def _finite(**arrays: Vector) -> None:
    """Raise ``ValueError`` naming the first array that holds NaN or infinity."""
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds non-finite values (NaN or infinity)")


def _churn_inputs(churned: Any, probability: Any, bins: int) -> tuple[Vector, Vector]:
    """Validated labels (0/1) and probabilities ([0, 1]) of the same length."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    labels = _vector("churned", churned)
    scores = _vector("probability", probability)
    _same_length(churned=labels, probability=scores)
    _finite(churned=labels, probability=scores)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("churned must hold only 0 and 1")
    if ((scores < 0.0) | (scores > 1.0)).any():
        raise ValueError("probability must lie in [0, 1]")
    return labels, scores


def reliability_curve(
    churned: np.ndarray, probability: np.ndarray, *, bins: int = 10
) -> list[dict[str, Any]]:
    """The calibration table: ``bins`` equal-width bins on [0, 1], each with its bounds, its
    users, their mean predicted probability and their observed churn rate.

    Bin ``i`` holds ``lower <= p < upper``; the last bin also holds ``p == 1``. Every bin is
    listed, an empty one with ``users`` 0 and ``None`` means, so tables from two models line
    up row by row. The ``users`` column sums to the number of users.
    """
    labels, scores = _churn_inputs(churned, probability, bins)
    # i / bins from integers is the correctly rounded bound (0.3, not 0.30000000000000004),
    # and searching those same edges keeps every user inside the bounds the table shows
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    users = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=scores, minlength=bins)
    observed = np.bincount(index, weights=labels, minlength=bins)
    table = []
    for i in range(bins):
        count = int(users[i])
        table.append(
            {
                "bin": i,
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "users": count,
                "mean_predicted": float(predicted[i] / count) if count else None,
                "observed_rate": float(observed[i] / count) if count else None,
            }
        )
    return table


def churn_metrics(
    churned: np.ndarray, probability: np.ndarray, *, bins: int = 10
) -> dict[str, Any]:
    """How well ``probability`` (of churning) predicts ``churned`` (1 churned, 0 stayed).

    Gives ``users``, ``churn_rate``, ``roc_auc``, ``pr_auc`` (average precision), ``brier``,
    ``log_loss`` (probabilities clipped to [1e-15, 1 - 1e-15]) and ``reliability`` (see
    ``reliability_curve``). With only one class the ranking metrics are ``None`` and
    ``error`` is ``ONE_CLASS`` (Brier and log loss still hold); with no users every metric is
    ``None`` and ``error`` is ``NO_USERS``.
    """
    labels, scores = _churn_inputs(churned, probability, bins)
    reliability = reliability_curve(labels, scores, bins=bins)
    users = len(labels)
    if users == 0:
        return {
            "users": 0,
            "error": "NO_USERS",
            "churn_rate": None,
            "roc_auc": None,
            "pr_auc": None,
            "brier": None,
            "log_loss": None,
            "reliability": reliability,
        }
    result: dict[str, Any] = {"users": users, "churn_rate": float(labels.mean())}
    if len(np.unique(labels)) < 2:
        # AUC compares churners with stayers: it needs both
        result["error"] = "ONE_CLASS"
        result["roc_auc"] = None
        result["pr_auc"] = None
    else:
        result["roc_auc"] = float(roc_auc_score(labels, scores))
        result["pr_auc"] = float(average_precision_score(labels, scores))
    clipped = np.clip(scores, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    result["brier"] = float(brier_score_loss(labels, scores, labels=[0, 1]))
    result["log_loss"] = float(log_loss(labels, clipped, labels=[0, 1]))
    result["reliability"] = reliability
    return result


def clv_metrics(
    revenue: np.ndarray,
    expected_revenue: np.ndarray,
    orders: np.ndarray,
    expected_orders: np.ndarray,
) -> dict[str, Any]:
    """How well the expected revenue and orders over the horizon match what each user then
    spent and bought.

    Gives ``users``, ``revenue_mae``, ``revenue_rmse``, ``orders_mae``, ``spearman`` (rank
    correlation of predicted and actual revenue), ``top_decile_revenue_share``, and the
    actual and predicted ``total_revenue`` and ``predicted_total_revenue``.

    The top decile is the ``ceil(n / 10)`` users with the highest predicted revenue (ties
    kept in input order by a stable sort); its share of the actual total is ``None`` when
    that total is not positive. ``spearman`` is ``None`` with ``error`` ``CONSTANT`` when
    either side is constant (a rank correlation needs two distinct ranks on each side). With
    no users every metric is ``None`` and ``error`` is ``NO_USERS``.
    """
    actual = _vector("revenue", revenue)
    predicted = _vector("expected_revenue", expected_revenue)
    bought = _vector("orders", orders)
    expected = _vector("expected_orders", expected_orders)
    arrays = {
        "revenue": actual,
        "expected_revenue": predicted,
        "orders": bought,
        "expected_orders": expected,
    }
    users = _same_length(**arrays)
    _finite(**arrays)
    if users == 0:
        return {
            "users": 0,
            "error": "NO_USERS",
            "revenue_mae": None,
            "revenue_rmse": None,
            "orders_mae": None,
            "spearman": None,
            "top_decile_revenue_share": None,
            "total_revenue": None,
            "predicted_total_revenue": None,
        }
    result: dict[str, Any] = {
        "users": users,
        "revenue_mae": float(mean_absolute_error(actual, predicted)),
        "revenue_rmse": float(root_mean_squared_error(actual, predicted)),
        "orders_mae": float(mean_absolute_error(bought, expected)),
    }
    # checked first: scipy warns on constant input and answers NaN
    if np.ptp(actual) == 0 or np.ptp(predicted) == 0:
        result["error"] = "CONSTANT"
        result["spearman"] = None
    else:
        result["spearman"] = float(spearmanr(predicted, actual).statistic)
    total = float(actual.sum())
    top = np.argsort(-predicted, kind="stable")[: math.ceil(users / 10)]
    result["top_decile_revenue_share"] = float(actual[top].sum() / total) if total > 0 else None
    result["total_revenue"] = total
    result["predicted_total_revenue"] = float(predicted.sum())
    return result


def cumulative_gains(
    actual: np.ndarray, score: np.ndarray, points: int = 20
) -> list[tuple[float, float]]:
    """The cumulative gains (lift) curve: target users by descending ``score``; after each
    share ``k / points`` of them, the share of the total ``actual`` captured so far.

    ``actual`` is what counts as gain: 0/1 churned for churn, revenue for lifetime value.
    The curve has ``points + 1`` pairs from ``(0.0, 0.0)`` to ``(1.0, 1.0)``; a random order
    follows the diagonal. Users with tied scores are taken as one block, captured in
    proportion to how much of it is targeted (the expected gain when the tie is broken at
    random), so a constant score draws the diagonal instead of whatever order the input
    happened to have. Empty when there are no users or nothing to capture (total <= 0).
    """
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    gain = _vector("actual", actual)
    ranking = _vector("score", score)
    users = _same_length(actual=gain, score=ranking)
    _finite(actual=gain, score=ranking)
    total = float(gain.sum())
    if users == 0 or total <= 0:
        return []
    order = np.argsort(-ranking, kind="stable")
    ordered_scores = ranking[order]
    captured = np.cumsum(gain[order])
    # the last position of each block of equal scores, and the gain captured through it
    ends = np.flatnonzero(np.append(ordered_scores[1:] != ordered_scores[:-1], True))
    positions = np.concatenate(([0.0], ends + 1.0))
    shares = np.concatenate(([0.0], captured[ends] / total))
    targeted = np.arange(points + 1, dtype=np.float64) / points
    curve = np.interp(targeted * users, positions, shares)
    return [(float(x), float(y)) for x, y in zip(targeted, curve, strict=True)]


def reference_bins(expected: np.ndarray, *, bins: int = 10) -> dict[str, list[float]]:
    """A reference sample's bins for later PSI checks, kept instead of the sample: the
    quantile edges of its finite values (about ``bins`` bins, equally full; duplicate edges
    dropped, so a feature with few distinct values gets fewer) and each bin's share, the
    last share being NaN's."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    reference = _vector("expected", expected)
    known = reference[np.isfinite(reference)]
    if len(known):
        edges = np.unique(np.quantile(known, np.arange(1, bins, dtype=np.float64) / bins))
    else:
        edges = np.empty(0)
    return {"edges": edges.tolist(), "shares": _bin_shares(edges, reference).tolist()}


def _bin_shares(edges: Vector, sample: Vector) -> Vector:
    """Each bin's share of ``sample``: right-closed bins between the edges, then NaN."""
    if len(sample) == 0:
        return np.zeros(len(edges) + 2)
    missing = np.isnan(sample)
    index = np.searchsorted(edges, sample[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    counts = np.append(counts, float(missing.sum()))
    return np.asarray(counts / len(sample), dtype=np.float64)


def stability_against(reference: Mapping[str, Sequence[float]], actual: np.ndarray) -> float | None:
    """The PSI of ``actual`` against bins made by ``reference_bins`` (see
    ``population_stability_index``); ``None`` when either side is empty."""
    current = _vector("actual", actual)
    expected = np.asarray(reference["shares"], dtype=np.float64)
    if len(current) == 0 or not expected.sum() > 0:
        return None
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(
        _bin_shares(np.asarray(reference["edges"], dtype=np.float64), current), PSI_FLOOR
    )
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability_index(
    expected: np.ndarray, actual: np.ndarray, *, bins: int = 10
) -> float | None:
    """The population stability index of ``actual`` (the current sample of a feature or a
    score) against ``expected`` (the reference sample, usually the training data).

    ``PSI = sum over bins of (a - e) * ln(a / e)``, ``a`` and ``e`` the shares of each sample
    in the bin. The bins are the quantiles of ``expected`` (about ``bins`` of them, equally
    full on the reference; duplicate edges are dropped, so a feature with few distinct
    values gets fewer bins), plus one bin for NaN (a feature that goes missing more often is
    a shift too). Shares are floored at ``PSI_FLOOR`` so an empty bin gives a large, finite
    term instead of infinity.

    Conventional reading: below 0.1 the population is stable; 0.1 to 0.25 a moderate shift,
    worth watching; above 0.25 a significant shift, the model should be checked or retrained.
    ``None`` when either sample is empty.
    """
    reference = _vector("expected", expected)
    if len(reference) == 0:
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        return None
    return stability_against(reference_bins(reference, bins=bins), actual)
