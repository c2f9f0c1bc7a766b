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
        since = None
        if aggregation == "count":
            return acc.n
        if aggregation == "sum":
            return round(acc.sum / MICRO, 6)
        if aggregation == "avg":
            return round(acc.sum / MICRO / acc.n, 6) if acc.n else None
        if aggregation == "min":
            return acc.min
        if aggregation == "max":
            return acc.max
    else:
        last_hour = as_of_ms // MS_PER_HOUR
        first_hour = last_hour - 24 * window + 1
        since = as_of_ms - window * MS_PER_DAY
        # only the buckets the aggregation reads are summed
        if aggregation == "count":
            return sum(_in_window(acc.hours, first_hour, last_hour))
        if aggregation == "sum":
            return round(sum(_in_window(acc.hour_sum, first_hour, last_hour)) / MICRO, 6)
        if aggregation == "avg":
            count = sum(_in_window(acc.hours, first_hour, last_hour))
            total = sum(_in_window(acc.hour_sum, first_hour, last_hour))
            return round(total / MICRO / count, 6) if count else None
        if aggregation == "min":
            lows = _in_window(acc.hour_min, first_hour, last_hour)
            return min(lows) if lows else None
        if aggregation == "max":
            highs = _in_window(acc.hour_max, first_hour, last_hour)
            return max(highs) if highs else None
    stamped = acc.first if aggregation == "first" else acc.last
    if stamped is None or (since is not None and not since < stamped.ts <= as_of_ms):
        return None
    if aggregation == "days_since":
        return round(max(0, as_of_ms - stamped.ts) / MS_PER_DAY, 3)
    return stamped.value if feature.properties else format_ms(stamped.ts)


def _empty_value(feature: CompiledFeature) -> Any:
    return 0 if feature.definition.aggregation in ("count", "sum") else None


def _feature_values(
    feature: CompiledFeature,
    acc: Accumulator | None,
    as_of_ms: int,
    labels: Collection[str] | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for window in feature.definition.windows:
        label = _window_label(window)
        if labels is None or label in labels:
            values[label] = (
                _empty_value(feature)
                if acc is None
                else _evaluate_accumulator(feature, acc, window, as_of_ms)
            )
    return values


def evaluate_features(
    state: FeatureState,
    features: FeatureSet,
    as_of_ms: int,
    *,
    only: Mapping[str, Collection[str] | None] | None = None,
    windows: Mapping[tuple[str, str], Collection[str]] | None = None,
) -> dict[str, Any]:
    """Every definition's value per window at ``as_of_ms`` (grouped ones nest by group);
    with ``only``, just the definitions it names, and of a grouped one just the groups it
    lists (``None``: every group); with ``windows`` (``window_reach``), of a definition and
    group it holds (``(name, "")`` for one not grouped) just the windows it lists by label
    (``30d``, ``all``), every window of the others. A window left out is left out of the
    result, not computed: the others' values are the same."""
    result: dict[str, Any] = {}
    for feature in features.features:
        name = feature.name
        if only is not None and name not in only:
            continue
        groups = state.get(name, {})
        if feature.group_by is None:
            labels = windows.get((name, "")) if windows is not None else None
            result[name] = _feature_values(feature, groups.get(""), as_of_ms, labels)
        else:
            wanted = only.get(name) if only is not None else None
            # the groups asked for that the profile holds, sorted (``wanted`` is the smaller)
            keys = sorted(groups) if wanted is None else sorted(groups.keys() & wanted)
            result[name] = {
                key: _feature_values(
                    feature,
                    groups[key],
                    as_of_ms,
                    windows.get((name, key)) if windows is not None else None,
                )
                for key in keys
            }
    return result


def window_reach(
    paths: Collection[tuple[str, ...]], features: FeatureSet
) -> dict[tuple[str, str], frozenset[str]]:
    """The windows that ``paths`` (split at the dots, resolved as a reader that takes the
    longest key at each level) can reach of each definition and group, for
    ``evaluate_features(windows=...)``: a definition or group a path reads whole (or no
    path reads) is not in it, so every window of it is computed."""
    labels: dict[tuple[str, str], set[str] | None] = {}
    by_name = {f.name: f for f in features.features}
    for parts in paths:
        for n in range(1, len(parts) + 1):
            feature = by_name.get(".".join(parts[:n]))
            if feature is None:
                continue
            rest = parts[n:]
            # a window's label holds no dot: only the part right after the definition (or
            # after its group, which may hold dots: every split of the rest) can name one
            ends = (
                [("", rest)]
                if feature.group_by is None
                else [(".".join(rest[:m]), rest[m:]) for m in range(1, len(rest) + 1)]
            )
            for group, below in ends:
                key = (feature.name, group)
                if not below:
                    labels[key] = None
                elif key not in labels or labels[key] is not None:
                    found = labels.setdefault(key, set())
                    if found is not None:
                        found.add(below[0])
    return {key: frozenset(found) for key, found in labels.items() if found is not None}


def _day_weight(day: int, oldest: int, as_of_ms: int, half_life: float) -> float:
    """What a day's engagement counts at ``as_of_ms``: -1 for a day beyond the retention."""
    if day <= oldest:
        return -1.0
    # a day's engagement is dated at its middle (UTC noon)
    age = max(0, as_of_ms - (day * MS_PER_DAY + MS_PER_DAY // 2))
    return float(0.5 ** (age / half_life))


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
    # the weight of each day, worked out once for every value that has it
    weights: dict[str, float] = {}
    for dimension in sorted(state):
        if dimensions is not None and dimension not in dimensions:
            continue
        scores: list[tuple[float, str]] = []
        for value, days in state[dimension].items():
            score = 0.0
            for day, micro in days.items():
                weight = weights.get(day)
                if weight is None:
                    weight = weights[day] = _day_weight(int(day), oldest, as_of_ms, half_life)
                if weight < 0:
                    continue
                score += micro / MICRO * weight
            scores.append((round(score, 4), value))
        scores.sort(key=lambda item: (-item[0], item[1]))
        result[dimension] = {value: score for score, value in scores[:top] if score > 0}
    return result
