"""Read-time values: windows summed from hourly buckets relative to ``as_of``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, format_ms
from personify.profiles.features.accumulators import (
    Accumulator,
    AffinityState,
    FeatureState,
)
from personify.profiles.features.compiled import CompiledFeature, FeatureSet
from personify.profiles.features.definitions import MICRO, Window


def _window_label(window: Window) -> str:
    return "all" if window == "all" else f"{window}d"


def _in_window(buckets: Mapping[str, Any], first_hour: int, last_hour: int) -> list[Any]:
    return [v for h, v in buckets.items() if first_hour <= int(h) <= last_hour]


def _evaluate_accumulator(
    feature: CompiledFeature, acc: Accumulator, window: Window, as_of_ms: int
) -> Any:
    aggregation = feature.definition.aggregation
    if window == "all":
        count, total, low, high = acc.n, acc.sum, acc.min, acc.max
        since = None
    else:
        last_hour = as_of_ms // MS_PER_HOUR
        first_hour = last_hour - 24 * window + 1
        since = as_of_ms - window * MS_PER_DAY
        if aggregation in ("count", "avg"):
            count = sum(_in_window(acc.hours, first_hour, last_hour))
        else:
            count = 0
        total = sum(_in_window(acc.hour_sum, first_hour, last_hour))
        lows = _in_window(acc.hour_min, first_hour, last_hour)
        highs = _in_window(acc.hour_max, first_hour, last_hour)
        low = min(lows) if lows else None
        high = max(highs) if highs else None
    if aggregation == "count":
        return count
    if aggregation == "sum":
        return round(total / MICRO, 6)
    if aggregation == "avg":
        return round(total / MICRO / count, 6) if count else None
    if aggregation == "min":
        return low
    if aggregation == "max":
        return high
    stamped = acc.first if aggregation == "first" else acc.last
    if stamped is None or (since is not None and not since < stamped.ts <= as_of_ms):
        return None
    if aggregation == "days_since":
        return round(max(0, as_of_ms - stamped.ts) / MS_PER_DAY, 3)
    return stamped.value if feature.properties else format_ms(stamped.ts)


def _empty_value(feature: CompiledFeature) -> Any:
    return 0 if feature.definition.aggregation in ("count", "sum") else None


def _feature_values(
    feature: CompiledFeature, acc: Accumulator | None, as_of_ms: int
) -> dict[str, Any]:
    return {
        _window_label(w): (
            _empty_value(feature)
            if acc is None
            else _evaluate_accumulator(feature, acc, w, as_of_ms)
        )
        for w in feature.definition.windows
    }


def evaluate_features(
    state: FeatureState,
    features: FeatureSet,
    as_of_ms: int,
    *,
    only: Mapping[str, Collection[str] | None] | None = None,
) -> dict[str, Any]:
    """Every definition's value per window at ``as_of_ms`` (grouped ones nest by group);
    with ``only``, just the definitions it names, and of a grouped one just the groups it
    lists (``None``: every group)."""
    result: dict[str, Any] = {}
    for feature in features.features:
        if only is not None and feature.name not in only:
            continue
        groups = state.get(feature.name, {})
        if feature.group_by is None:
            result[feature.name] = _feature_values(feature, groups.get(""), as_of_ms)
        else:
            wanted = only.get(feature.name) if only is not None else None
            result[feature.name] = {
                key: _feature_values(feature, groups[key], as_of_ms)
                for key in sorted(groups)
                if wanted is None or key in wanted
            }
    return result


def evaluate_affinities(
    state: AffinityState,
    features: FeatureSet,
    as_of_ms: int,
    *,
    latest_ms: int,
    top: int = 20,
    dimensions: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Decayed scores: each day's weight halves every ``affinity_half_life_days`` behind as_of.

    Days beyond the retention behind ``latest_ms`` (the profile's latest event) count for
    nothing, whether or not they were compacted away yet. With ``dimensions``, only those.
    """
    result: dict[str, dict[str, float]] = {}
    half_life = features.half_life_ms
    oldest = latest_ms // MS_PER_DAY - features.affinity_keep_days
    for dimension in sorted(state):
        if dimensions is not None and dimension not in dimensions:
            continue
        scores: list[tuple[float, str]] = []
        for value, days in state[dimension].items():
            score = 0.0
            for day, micro in days.items():
                if int(day) <= oldest:
                    continue
                # a day's engagement is dated at its middle (UTC noon)
                age = max(0, as_of_ms - (int(day) * MS_PER_DAY + MS_PER_DAY // 2))
                score += micro / MICRO * 0.5 ** (age / half_life)
            scores.append((round(score, 4), value))
        scores.sort(key=lambda item: (-item[0], item[1]))
        result[dimension] = {value: score for score, value in scores[:top] if score > 0}
    return result
