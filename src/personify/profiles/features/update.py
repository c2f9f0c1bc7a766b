"""The per-event update of feature and affinity states, and their merge and pruning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, ProfileEvent
from personify.profiles.features.accumulators import (
    Accumulator,
    AffinityState,
    FeatureState,
    Stamped,
    earliest,
    latest,
)
from personify.profiles.features.compiled import CompiledFeature, FeatureSet
from personify.profiles.features.definitions import (
    MAX_AFFINITY_VALUE_CHARS,
    MAX_GROUP_CHARS,
    MICRO,
    STAMPED_AGGREGATIONS,
    VALUE_AGGREGATIONS,
)
from personify.profiles.features.paths import as_number


def _group_keys(feature: CompiledFeature, event: ProfileEvent) -> list[str]:
    if feature.group_by is None:
        return [""]
    if feature.group_by.text == "$event":
        return [event.name[:MAX_GROUP_CHARS]]
    keys = []
    for value in feature.group_by.values(event):
        if isinstance(value, str | int | float | bool):
            keys.append(str(value)[:MAX_GROUP_CHARS])
    return keys


def _add_hour(bucket: dict[str, int], hour: str, amount: int) -> None:
    bucket[hour] = bucket.get(hour, 0) + amount


def update_features(
    state: FeatureState, features: FeatureSet, event: ProfileEvent, *, keep_from_ms: int
) -> None:
    """Add ``event`` to every matching definition's accumulators (in place).

    ``keep_from_ms`` is the profile's latest event time: hourly buckets older than each
    definition's longest window behind it are not kept (they can never be in a window).
    """
    hour_number = event.ts // MS_PER_HOUR
    hour = str(hour_number)
    latest_hour = keep_from_ms // MS_PER_HOUR
    for feature in features.features_for(event.name):
        if feature.where and not all(f.matches(event) for f in feature.where):
            continue
        aggregation = feature.definition.aggregation
        number: float | None = None
        value: Any = None
        if feature.properties:
            present, value = feature.value_of(event)
            if not present:
                continue
            if aggregation in VALUE_AGGREGATIONS:
                number = as_number(value)
                if number is None:
                    continue
        keys = _group_keys(feature, event)
        if not keys:
            continue
        groups = state.setdefault(feature.name, {})
        keep_hour = bool(feature.days) and hour_number > latest_hour - feature.keep_hours
        stamped = (
            Stamped(event.ts, event.message_id, value if feature.properties else None)
            if aggregation in STAMPED_AGGREGATIONS
            else None
        )
        for key in keys:
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = Accumulator()
            acc.n += 1
            if keep_hour and aggregation in ("count", "avg"):
                _add_hour(acc.hours, hour, 1)
            if number is not None:
                if aggregation in ("sum", "avg"):
                    micro = round(number * MICRO)
                    acc.sum += micro
                    if keep_hour:
                        _add_hour(acc.hour_sum, hour, micro)
                elif aggregation == "min":
                    acc.min = number if acc.min is None else min(acc.min, number)
                    if keep_hour:
                        low = acc.hour_min.get(hour)
                        acc.hour_min[hour] = number if low is None else min(low, number)
                else:
                    acc.max = number if acc.max is None else max(acc.max, number)
                    if keep_hour:
                        high = acc.hour_max.get(hour)
                        acc.hour_max[hour] = number if high is None else max(high, number)
            elif aggregation == "first":
                acc.first = earliest(acc.first, stamped)
            elif stamped is not None:
                acc.last = latest(acc.last, stamped)


def _merge_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for key, amount in other.items():
        into[key] = into.get(key, 0) + amount


def _merge_extreme(into: dict[str, float], other: Mapping[str, float], pick: Any) -> None:
    for key, value in other.items():
        mine = into.get(key)
        into[key] = value if mine is None else pick(mine, value)


def _merge_accumulator(into: Accumulator, other: Accumulator) -> None:
    into.n += other.n
    into.sum += other.sum
    if other.min is not None:
        into.min = other.min if into.min is None else min(into.min, other.min)
    if other.max is not None:
        into.max = other.max if into.max is None else max(into.max, other.max)
    into.first = earliest(into.first, other.first)
    into.last = latest(into.last, other.last)
    _merge_counts(into.hours, other.hours)
    _merge_counts(into.hour_sum, other.hour_sum)
    _merge_extreme(into.hour_min, other.hour_min, min)
    _merge_extreme(into.hour_max, other.hour_max, max)


def merge_features(into: FeatureState, other: FeatureState) -> None:
    """Add ``other``'s accumulators to ``into`` (the merge of two profiles)."""
    for name, groups in other.items():
        mine = into.setdefault(name, {})
        for key, acc in groups.items():
            existing = mine.get(key)
            if existing is None:
                mine[key] = msgspec.structs.replace(
                    acc,
                    hours=dict(acc.hours),
                    hour_sum=dict(acc.hour_sum),
                    hour_min=dict(acc.hour_min),
                    hour_max=dict(acc.hour_max),
                )
            else:
                _merge_accumulator(existing, acc)


def prune_features(state: FeatureState, features: FeatureSet, latest_ms: int) -> None:
    """Drop hourly buckets that no window can reach any more (behind ``latest_ms``)."""
    latest_hour = latest_ms // MS_PER_HOUR
    for name, groups in state.items():
        feature = features.by_name.get(name)
        if feature is None or not feature.days:
            continue
        oldest = latest_hour - feature.keep_hours
        for acc in groups.values():
            for bucket in (acc.hours, acc.hour_sum, acc.hour_min, acc.hour_max):
                if bucket:
                    for hour in [h for h in bucket if int(h) <= oldest]:
                        del bucket[hour]


def update_affinities(
    state: AffinityState, features: FeatureSet, event: ProfileEvent, *, keep_from_ms: int
) -> None:
    """Add the event's engagement weight to each category/tag it carries (per UTC day)."""
    day_number = event.ts // MS_PER_DAY
    if day_number <= keep_from_ms // MS_PER_DAY - features.affinity_keep_days:
        return
    day = str(day_number)
    for rule in features.rules_for(event.name):
        if rule.where and not all(f.matches(event) for f in rule.where):
            continue
        values: set[str] = set()
        for path in rule.paths:
            for value in path.values(event):
                kind = type(value)
                if kind is str or kind is int or kind is float:
                    text = str(value).strip().lower()[:MAX_AFFINITY_VALUE_CHARS]
                    if text:
                        values.add(text)
        if not values:
            continue
        dimension = state.setdefault(rule.rule.dimension, {})
        for text in values:
            days = dimension.setdefault(text, {})
            days[day] = days.get(day, 0) + rule.weight_micro


def merge_affinities(into: AffinityState, other: AffinityState) -> None:
    """Add ``other``'s affinity weights to ``into``."""
    for dimension, values in other.items():
        mine = into.setdefault(dimension, {})
        for value, days in values.items():
            _merge_counts(mine.setdefault(value, {}), days)


def prune_affinities(state: AffinityState, features: FeatureSet, latest_ms: int) -> None:
    """Drop daily weights older than the retention behind ``latest_ms``."""
    oldest = latest_ms // MS_PER_DAY - features.affinity_keep_days
    for dimension in list(state):
        values = state[dimension]
        for value in list(values):
            days = values[value]
            for day in [d for d in days if int(d) <= oldest]:
                del days[day]
            if not days:
                del values[value]
        if not values:
            del state[dimension]
