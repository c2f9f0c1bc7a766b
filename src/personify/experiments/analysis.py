"""The analysis of an experiment from per-variant sufficient statistics.

``analyze(request)`` takes the analysis document (``POST /v1/experiments/analyze``, and what the
lake's metric queries produce) and returns every variant of every metric against control with
the chosen method, the sample-ratio-mismatch check and multiple-comparison adjustment.

Guarantees:

* a malformed request (unknown method, alpha out of (0, 0.5], a negative ``n``, a
  non-number, fewer than two variants, …) raises ``ValidationError`` whose message names
  the first problem's JSON pointer and whose ``details["errors"]`` lists every problem;
* degenerate data never raise: the comparison carries an UPPERCASE ``error`` code
  (``MISSING_VARIANT``, ``NO_UNITS``, ``ZERO_DENOMINATOR``, ``ZERO_CONTROL_MEAN``,
  ``ZERO_VARIANCE``, ``NON_FINITE``) with every statistic null, and the problem is also
  listed in the result's ``errors`` with its pointer; a failed SRM check is listed there
  too (``SAMPLE_RATIO_MISMATCH``);
* ``pValue`` is Welch's (or the always-valid) p-value of the absolute difference, and
  ``chanceToWin``/``expectedLoss`` are in the metric's units; relative uplift is reported
  with its own delta-method interval. ``significant`` is two-sided: the adjusted p-value is
  below alpha (frequentist, sequential) or the credible interval excludes 0 (Bayesian).
  ``goal: "decrease"`` turns chance to win and expected loss around.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from personify.errors import ValidationError
from personify.experiments.statistics import (
    Effect,
    Moments,
    bayesian_test,
    benjamini_hochberg,
    cuped_moments,
    holm,
    moments_of,
    sequential_test,
    srm_p_value,
    welch_test,
)
from personify.experiments.sufficient import (
    CupedStatistic,
    RatioStatistic,
    Statistic,
    statistic_type,
)

__all__ = ["SRM_THRESHOLD", "analyze", "validate_request"]

METHODS = ("frequentist", "bayesian", "sequential")
CORRECTIONS = ("holm", "bh", "none")
METRIC_TYPES = ("mean", "ratio")
GOALS = ("increase", "decrease")
SRM_THRESHOLD = 0.001  # GrowthBook's default: a mismatch this unlikely is a broken experiment
MAX_METRICS = 1000
MAX_VARIANTS = 100
# a bound on every number taken from outside, so converting and squaring cannot overflow
MAX_MAGNITUDE = 1e300
MAX_UNITS = 2**53

MESSAGES = {
    "MISSING_VARIANT": "no statistics for {who}",
    "NO_UNITS": "{who} has no units",
    "ZERO_DENOMINATOR": "the ratio's denominator sums to 0 for {who}",
    "ZERO_CONTROL_MEAN": "the control mean is 0, so the relative uplift is undefined",
    "ZERO_VARIANCE": "{who} has zero variance (one unit, or every unit the same value)",
    "NON_FINITE": "the statistics overflow: a sum or a square is too large",
}


def _pointer(*parts: str | int) -> str:
    """The RFC 6901 pointer of a location (``~`` is written ``~0`` and ``/`` is ``~1``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# --- validation -------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.found: list[dict[str, str]] = []

    def add(self, pointer: str, message: str) -> None:
        self.found.append({"pointer": pointer, "code": "invalid_field", "message": message})


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_MAGNITUDE
    return math.isfinite(value) and abs(value) <= MAX_MAGNITUDE


def _check_statistic(
    problems: _Problems, at: str, value: Any, cls: type[Statistic], cuped: bool
) -> None:
    if not isinstance(value, Mapping):
        problems.add(at, "must be an object of sufficient statistics")
        return
    for name in (f.name for f in fields(cls)):
        field_at = f"{at}/{name}"
        if name not in value:
            what = "a CUPED metric" if cuped else f"a {cls.kind} metric"
            problems.add(field_at, f"is required for {what}")
            continue
        raw = value[name]
        if not _is_number(raw):
            problems.add(field_at, "must be a finite number")
        elif name == "n":
            if raw < 0 or raw > MAX_UNITS or float(raw) != int(raw):
                problems.add(field_at, f"must be an integer from 0 to {MAX_UNITS}")
        elif name.endswith("sum_squares") and raw < 0:
            problems.add(field_at, "a sum of squares cannot be negative")


def _check_metric(problems: _Problems, index: int, metric: Any, keys: set[str]) -> list[str]:
    """Check one metric; return its variant keys."""
    at = _pointer("metrics", index)
    if not isinstance(metric, Mapping):
        problems.add(at, "must be an object")
        return []
    key = metric.get("key")
    if not isinstance(key, str) or not key:
        problems.add(f"{at}/key", "must be a non-empty string")
    elif key in keys:
        problems.add(f"{at}/key", f"duplicate metric key {key!r}")
    else:
        keys.add(key)
    metric_type = metric.get("type", "mean")
    if metric_type not in METRIC_TYPES:
        problems.add(f"{at}/type", f"must be one of {', '.join(METRIC_TYPES)}")
        metric_type = "mean"
    if metric.get("goal", "increase") not in GOALS:
        problems.add(f"{at}/goal", f"must be one of {', '.join(GOALS)}")
    for flag in ("guardrail", "cuped"):
        if not isinstance(metric.get(flag, False), bool):
            problems.add(f"{at}/{flag}", "must be true or false")
    cuped = metric.get("cuped", False) is True
    if cuped and metric_type == "ratio":
        problems.add(f"{at}/cuped", "CUPED applies to mean metrics, not ratio metrics")
        cuped = False
    variants = metric.get("variants")
    if not isinstance(variants, Mapping) or not variants:
        problems.add(f"{at}/variants", "must be a non-empty object of variant statistics")
        return []
    if len(variants) > MAX_VARIANTS:
        problems.add(f"{at}/variants", f"at most {MAX_VARIANTS} variants")
        return []
    cls = statistic_type(metric_type, cuped)
    names = []
    for name, statistic in variants.items():
        if not isinstance(name, str) or not name:
            problems.add(f"{at}/variants", "variant keys must be non-empty strings")
            continue
        names.append(name)
        _check_statistic(problems, f"{at}/variants{_pointer(name)}", statistic, cls, cuped)
    return names


def _check_by_variant(
    problems: _Problems, request: Mapping[str, Any], field: str, variants: list[str]
) -> None:
    """``weights`` (positive numbers) or ``units`` (integers ≥ 0): one per variant."""
    if field not in request:
        return
    value = request[field]
    if not isinstance(value, Mapping):
        problems.add(_pointer(field), "must be an object keyed by variant")
        return
    for name, number in value.items():
        at = _pointer(field, str(name))
        if name not in variants:
            problems.add(at, f"unknown variant {name!r}")
        elif not _is_number(number):
            problems.add(at, "must be a finite number")
        elif field == "weights" and number <= 0:
            problems.add(at, "a weight must be greater than 0")
        elif field == "units" and (
            number < 0 or number > MAX_UNITS or float(number) != int(number)
        ):
            problems.add(at, f"must be an integer from 0 to {MAX_UNITS}")
    for name in variants:
        if name not in value:
            problems.add(_pointer(field, name), f"missing: every variant needs its {field[:-1]}")


def validate_request(request: Any) -> None:
    """Raise ``ValidationError`` naming the JSON pointer of every problem in ``request``."""
    problems = _Problems()
    if not isinstance(request, Mapping):
        problems.add("", "the analysis request must be a JSON object")
        _raise(problems)
        return
    if request.get("method", "frequentist") not in METHODS:
        problems.add("/method", f"must be one of {', '.join(METHODS)}")
    alpha = request.get("alpha", 0.05)
    if not _is_number(alpha) or not 0 < alpha <= 0.5:
        problems.add("/alpha", "must be a number in (0, 0.5]")
    tuning = request.get("sequentialTuning", 5000)
    if not _is_number(tuning) or tuning <= 0:
        problems.add("/sequentialTuning", "must be a number greater than 0")
    if request.get("correction", "holm") not in CORRECTIONS:
        problems.add("/correction", f"must be one of {', '.join(CORRECTIONS)}")
    metrics = request.get("metrics")
    variants: list[str] = []
    if not isinstance(metrics, list) or not metrics:
        problems.add("/metrics", "must be a non-empty array of metrics")
    elif len(metrics) > MAX_METRICS:
        problems.add("/metrics", f"at most {MAX_METRICS} metrics")
    else:
        keys: set[str] = set()
        for index, metric in enumerate(metrics):
            for name in _check_metric(problems, index, metric, keys):
                if name not in variants:
                    variants.append(name)
        if len(variants) < 2 and not problems.found:
            problems.add("/metrics", "an experiment needs at least two variants")
    if "control" in request:
        control = request["control"]
        if not isinstance(control, str):
            problems.add("/control", "must be a variant key")
        elif variants and control not in variants:
            problems.add("/control", f"unknown variant {control!r}")
    if variants:
        _check_by_variant(problems, request, "weights", variants)
        _check_by_variant(problems, request, "units", variants)
    _raise(problems)


def _raise(problems: _Problems) -> None:
    if not problems.found:
        return
    first = problems.found[0]
    more = len(problems.found) - 1
    message = f"invalid analysis request at {first['pointer'] or '/'}: {first['message']}"
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    raise ValidationError(message, code="invalid_analysis", details={"errors": problems.found})


# --- analysis ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """One variant of one metric while the family's p-values are adjusted."""

    entry: dict[str, Any]
    effect: Effect | None


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _failure(
    code: str, metric_index: int, variant: str, control: str, errors: list[dict[str, str]]
) -> str:
    who = "control" if variant == control else f"variant {variant!r}"
    errors.append(
        {
            "code": code,
            "message": MESSAGES[code].format(who=who),
            "pointer": _pointer("metrics", metric_index, "variants", variant),
        }
    )
    return code


def _null_entry(name: str, statistic: Statistic | None, code: str, cuped: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "variant": name,
        "users": statistic.n if statistic is not None else None,
        "mean": _number(statistic.mean) if statistic is not None else None,
        "absolute": None,
        "relative": None,
        "pValue": None,
        "adjustedPValue": None,
        "chanceToWin": None,
        "expectedLoss": None,
        "significant": False,
    }
    if cuped:
        entry["cuped"] = None
    entry["error"] = code
    return entry


def _run(
    method: str,
    control: Moments,
    variant: Moments,
    *,
    alpha: float,
    tuning: float,
    lower_is_better: bool,
    relative: bool,
) -> Effect:
    if method == "bayesian":
        return bayesian_test(
            control, variant, alpha=alpha, relative=relative, lower_is_better=lower_is_better
        )
    if method == "sequential":
        return sequential_test(control, variant, alpha=alpha, tuning=tuning, relative=relative)
    return welch_test(control, variant, alpha=alpha, relative=relative)


def _analyze_metric(
    index: int,
    metric: Mapping[str, Any],
    settings: Mapping[str, Any],
    order: list[str],
    errors: list[dict[str, str]],
) -> tuple[dict[str, Any], list[_Row]]:
    metric_type = metric.get("type", "mean")
    cuped = metric.get("cuped", False) is True
    goal = metric.get("goal", "increase")
    cls = statistic_type(metric_type, cuped)
    stats: dict[str, Statistic] = {
        name: cls.from_mapping(value) for name, value in metric["variants"].items()
    }
    control_name: str = settings["control"]
    control = stats.get(control_name)
    result: dict[str, Any] = {
        "key": metric["key"],
        "type": metric_type,
        "goal": goal,
        "guardrail": metric.get("guardrail", False) is True,
        "control": {
            "variant": control_name,
            "users": control.n if control is not None else None,
            "mean": _number(control.mean) if control is not None else None,
        },
        "variants": [],
    }
    rows: list[_Row] = []
    for name in order:
        if name == control_name:
            continue
        variant = stats.get(name)
        code = _precheck(control, variant)
        if code is not None:
            blamed = control_name if _blames_control(control, code) else name
            _failure(code, index, blamed, control_name, errors)
            rows.append(_Row(_null_entry(name, variant, code, cuped), None))
            continue
        assert control is not None and variant is not None  # _precheck saw both
        cuped_block: dict[str, float] | None = None
        if isinstance(control, CupedStatistic) and isinstance(variant, CupedStatistic):
            a, b, theta, reduction = cuped_moments(control, variant)
            cuped_block = {"theta": theta, "varianceReduction": reduction}
        else:
            a, b = moments_of(control), moments_of(variant)
        options = {
            "alpha": settings["alpha"],
            "tuning": settings["sequentialTuning"],
            "lower_is_better": goal == "decrease",
        }
        absolute = _run(settings["method"], a, b, relative=False, **options)
        relative = _run(settings["method"], a, b, relative=True, **options)
        code = absolute.error or relative.error
        if code is not None:
            _failure(code, index, name, control_name, errors)
            rows.append(_Row(_null_entry(name, variant, code, cuped), None))
            continue
        entry: dict[str, Any] = {
            "variant": name,
            "users": variant.n,
            "mean": _number(variant.mean),
            "absolute": {"estimate": absolute.estimate, "ci": [absolute.ci_low, absolute.ci_high]},
            "relative": {"estimate": relative.estimate, "ci": [relative.ci_low, relative.ci_high]},
            "pValue": absolute.p_value,
            "adjustedPValue": None,
            "chanceToWin": absolute.chance_to_win,
            "expectedLoss": absolute.expected_loss,
            "significant": False,
        }
        if cuped:
            entry["cuped"] = cuped_block
        entry["error"] = None
        rows.append(_Row(entry, absolute))
    result["variants"] = [row.entry for row in rows]
    return result, rows


def _precheck(control: Statistic | None, variant: Statistic | None) -> str | None:
    """The error code of a comparison that cannot start (before any moments are taken)."""
    if control is None or variant is None:
        return "MISSING_VARIANT"
    if control.n <= 0 or variant.n <= 0:
        return "NO_UNITS"
    if _zero_denominator(control) or _zero_denominator(variant):
        return "ZERO_DENOMINATOR"
    return None


def _zero_denominator(statistic: Statistic) -> bool:
    return isinstance(statistic, RatioStatistic) and statistic.denominator_sum == 0


def _blames_control(control: Statistic | None, code: str) -> bool:
    if control is None:
        return True
    if code == "NO_UNITS":
        return control.n <= 0
    if code == "ZERO_DENOMINATOR":
        return _zero_denominator(control)
    return False


def _srm(
    request: Mapping[str, Any], order: list[str], errors: list[dict[str, str]]
) -> dict[str, Any]:
    units: Mapping[str, Any] | None = request.get("units")
    if units is None:
        # default: each variant's units in the first metric that has it
        found: dict[str, int] = {}
        for metric in request["metrics"]:
            for name, value in metric["variants"].items():
                found.setdefault(name, int(value["n"]))
        units = found
    weights: Mapping[str, Any] = request.get("weights") or {name: 1.0 for name in order}
    observed = {name: int(units.get(name, 0)) for name in order}
    total_weight = sum(float(weights[name]) for name in order)
    total = sum(observed.values())
    expected = {name: float(weights[name]) / total_weight * total for name in order}
    p_value = srm_p_value([observed[n] for n in order], [float(weights[n]) for n in order])
    ok = p_value >= SRM_THRESHOLD
    if not ok:
        errors.append(
            {
                "code": "SAMPLE_RATIO_MISMATCH",
                "message": (
                    f"the traffic split does not match the weights (p = {p_value:.3g} < "
                    f"{SRM_THRESHOLD}): assignment or logging is broken, so the results "
                    "cannot be trusted"
                ),
                "pointer": "/units" if "units" in request else "/metrics/0/variants",
            }
        )
    return {
        "pValue": p_value,
        "ok": ok,
        "threshold": SRM_THRESHOLD,
        "observed": observed,
        "expected": expected,
    }


def _adjust(rows: list[_Row], settings: Mapping[str, Any]) -> None:
    """Adjusted p-values over the whole family (every metric and variant), and significance."""
    alpha: float = settings["alpha"]
    tested = [row for row in rows if row.effect is not None]
    if settings["method"] == "bayesian":
        for row in tested:
            assert row.effect is not None
            row.entry["significant"] = row.effect.is_significant
        return
    p_values = [float(row.effect.p_value or 1.0) for row in tested if row.effect is not None]
    correction = settings["correction"]
    if correction == "holm":
        adjusted = holm(p_values)
    elif correction == "bh":
        adjusted = benjamini_hochberg(p_values)
    else:
        adjusted = p_values
    for row, p in zip(tested, adjusted, strict=True):
        row.entry["adjustedPValue"] = p
        row.entry["significant"] = p < alpha


def analyze(request: Mapping[str, Any]) -> dict[str, Any]:
    """Analyse every metric's variants against control (the analysis document in, the result
    out); raises ``ValidationError`` only for a malformed request, never for the data."""
    validate_request(request)
    metrics: list[Mapping[str, Any]] = request["metrics"]
    order: list[str] = []
    for metric in metrics:
        for name in metric["variants"]:
            if name not in order:
                order.append(name)
    settings = {
        "method": request.get("method", "frequentist"),
        "alpha": float(request.get("alpha", 0.05)),
        "sequentialTuning": float(request.get("sequentialTuning", 5000)),
        "correction": request.get("correction", "holm"),
        "control": request.get("control", next(iter(metrics[0]["variants"]))),
    }
    errors: list[dict[str, str]] = []
    srm = _srm(request, order, errors)
    results = []
    family: list[_Row] = []
    for index, metric in enumerate(metrics):
        result, rows = _analyze_metric(index, metric, settings, order, errors)
        results.append(result)
        family.extend(rows)
    _adjust(family, settings)
    return {
        "method": settings["method"],
        "alpha": settings["alpha"],
        "control": settings["control"],
        "correction": settings["correction"],
        "srm": srm,
        "metrics": results,
        "errors": errors,
    }
