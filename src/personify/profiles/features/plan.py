"""Feature definitions compiled to a vectorised plan: one batch's deltas by group-by.

``FeaturePlan.apply`` does for a whole batch what ``update_features`` and
``update_affinities`` do event by event, with the same result (the Hypothesis tests in
``tests/profiles`` compare the two):

1. **Rows.** Each definition selects its events by name code (a vector test). Only what
   must read an event's JSON is a loop over the selected events: a ``where`` filter, the
   property value, a ``group_by`` path other than ``$event``, and an affinity rule's paths.
   A definition without these (``event_counts``, ``orders``: the common case) is columns
   only.
2. **Group-by.** Rows are grouped by (profile, group key) for the all-time parts — count,
   integer micro-sum, min, max, and ``first``/``last`` as the extreme (event time,
   messageId) — and by (profile, group key, hour) for the windowed buckets, or (profile,
   dimension, value, UTC day) for affinities, with numpy reductions.
3. **Merge.** Each group adds into the profile's stored accumulators: one dictionary
   update per group, not per event.

Buckets and days that cannot be in any window behind the profile's latest event after the
batch are not kept (the per-event update keeps a few more, which compaction then drops,
so what is stored is the same).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from personify.profiles.batch import Groups, Int64s, ProfileBatch, codes_of, group_rows
from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR
from personify.profiles.features.accumulators import (
    Accumulator,
    AffinityState,
    FeatureState,
    Stamped,
    earliest,
    latest,
)
from personify.profiles.features.compiled import CompiledFeature, CompiledRule, FeatureSet
from personify.profiles.features.definitions import (
    MAX_AFFINITY_VALUE_CHARS,
    MAX_GROUP_CHARS,
    MICRO,
    VALUE_AGGREGATIONS,
)
from personify.profiles.features.paths import as_number

if TYPE_CHECKING:
    import numpy.typing as npt

# int64 holds |sum| < 9.2e18 micro-units; a batch whose rows could exceed it sums in Python
_SAFE_MICRO = 2**62


class _Rows:
    """One definition's rows: event row, group key code, and (for value aggregations) numbers."""

    __slots__ = ("event", "key", "keys", "numbers", "values")

    def __init__(
        self,
        event: Int64s,
        key: Int64s,
        keys: list[str],
        numbers: npt.NDArray[np.float64] | None,
        values: list[Any] | None,
    ) -> None:
        self.event = event
        self.key = key
        self.keys = keys
        self.numbers = numbers
        self.values = values


class FeaturePlan:
    """A ``FeatureSet`` compiled once into the batch computation of features and affinities."""

    def __init__(self, features: FeatureSet) -> None:
        self.features = features

    def apply(
        self,
        batch: ProfileBatch,
        features: Sequence[FeatureState],
        affinities: Sequence[AffinityState],
    ) -> None:
        """Add the batch's events to each profile's feature and affinity states (in place)."""
        if batch.size == 0:
            return
        for feature in self.features.features:
            rows = self._feature_rows(feature, batch)
            if rows is not None and len(rows.event):
                _merge_feature(feature, batch, rows, features)
        self._apply_affinities(batch, affinities)

    # -- rows --------------------------------------------------------------------------------

    def _feature_rows(self, feature: CompiledFeature, batch: ProfileBatch) -> _Rows | None:
        selected = batch.rows_named(feature.names)
        if not len(selected):
            return None
        aggregation = feature.definition.aggregation
        group_by = feature.group_by
        if not feature.where and not feature.properties:
            # columns only: every selected event is one row
            if group_by is None:
                return _Rows(selected, np.zeros(len(selected), dtype=np.int64), [""], None, None)
            if group_by.text == "$event":
                names = [name[:MAX_GROUP_CHARS] for name in batch.names]
                keys, remap = codes_of(names)
                return _Rows(selected, remap[batch.name_code[selected]], keys, None, None)
        events = batch.events
        rows: list[int] = []
        texts: list[str] = []
        numbers: list[float] = []
        values: list[Any] = []
        wants_number = aggregation in VALUE_AGGREGATIONS
        for row in selected.tolist():
            event = events[row]
            if feature.where and not all(f.matches(event) for f in feature.where):
                continue
            value: Any = None
            number = 0.0
            if feature.properties:
                present, value = feature.value_of(event)
                if not present:
                    continue
                if wants_number:
                    found = as_number(value)
                    if found is None:
                        continue
                    number = found
            if group_by is None:
                group_keys = [""]
            elif group_by.text == "$event":
                group_keys = [event.name[:MAX_GROUP_CHARS]]
            else:
                group_keys = [
                    str(v)[:MAX_GROUP_CHARS]
                    for v in group_by.values(event)
                    if isinstance(v, str | int | float | bool)
                ]
            for key in group_keys:
                rows.append(row)
                texts.append(key)
                numbers.append(number)
                values.append(value)
        keys, key_codes = codes_of(texts)
        return _Rows(
            np.asarray(rows, dtype=np.int64),
            key_codes,
            keys,
            np.asarray(numbers, dtype=np.float64) if wants_number else None,
            values if feature.properties else None,
        )

    def _apply_affinities(self, batch: ProfileBatch, affinities: Sequence[AffinityState]) -> None:
        features = self.features
        latest_day = batch.latest_ms // MS_PER_DAY
        keep_from_day = latest_day[batch.profile] - features.affinity_keep_days
        kept = batch.day > keep_from_day
        events = batch.events
        rows: list[int] = []
        texts: list[str] = []
        weights: list[int] = []
        for rule in features.rules:
            selected = batch.rows_named(rule.names)
            if len(selected):
                _rule_rows(rule, selected[kept[selected]].tolist(), events, rows, texts, weights)
        if not rows:
            return
        event = np.asarray(rows, dtype=np.int64)
        keys, key_code = codes_of(texts)
        weight = np.asarray(weights, dtype=np.int64)
        groups = group_rows(batch.profile[event], key_code, batch.day[event])
        totals = np.add.reduceat(weight[groups.order], groups.starts).tolist()
        firsts = groups.firsts
        profile = batch.profile[event[firsts]].tolist()
        day = batch.day[event[firsts]].tolist()
        pairs = [key.split("\x00", 1) for key in keys]
        day_texts = {d: str(d) for d in set(day)}
        for p, code, d, total in zip(profile, key_code[firsts].tolist(), day, totals, strict=True):
            dimension, value = pairs[code]
            days = affinities[p].setdefault(dimension, {}).setdefault(value, {})
            text = day_texts[d]
            days[text] = days.get(text, 0) + total


def _rule_rows(
    rule: CompiledRule,
    selected: list[int],
    events: Sequence[Any],
    rows: list[int],
    texts: list[str],
    weights: list[int],
) -> None:
    prefix = rule.rule.dimension + "\x00"
    # a batch repeats a few categories and tags many times: each text is cleaned once
    keys: dict[str, str] = {}
    weight = rule.weight_micro
    for row in selected:
        event = events[row]
        if rule.where and not all(f.matches(event) for f in rule.where):
            continue
        found: set[str] | None = None
        for path in rule.paths:
            for value in path.values(event):
                kind = type(value)
                if kind is str:
                    key = keys.get(value)
                    if key is None:
                        text = value.strip().lower()[:MAX_AFFINITY_VALUE_CHARS]
                        key = keys[value] = prefix + text if text else ""
                elif kind is int or kind is float:
                    text = str(value).strip().lower()[:MAX_AFFINITY_VALUE_CHARS]
                    key = prefix + text
                else:
                    continue
                if key:
                    if found is None:
                        found = {key}
                    else:
                        found.add(key)
        if found:
            for key in found:
                rows.append(row)
                texts.append(key)
                weights.append(weight)


# -- merge ----------------------------------------------------------------------------------


def _merge_feature(
    feature: CompiledFeature,
    batch: ProfileBatch,
    rows: _Rows,
    states: Sequence[FeatureState],
) -> None:
    aggregation = feature.definition.aggregation
    event = rows.event
    profile = batch.profile[event]
    groups = group_rows(profile, rows.key)
    firsts = groups.firsts
    sizes = groups.sizes(len(event)).tolist()
    group_profile = profile[firsts].tolist()
    group_key = [rows.keys[k] for k in rows.key[firsts].tolist()]
    name = feature.name
    accumulators: list[Accumulator] = []
    for p, key in zip(group_profile, group_key, strict=True):
        groups_of = states[p].setdefault(name, {})
        acc = groups_of.get(key)
        if acc is None:
            acc = groups_of[key] = Accumulator()
        accumulators.append(acc)
    for acc, n in zip(accumulators, sizes, strict=True):
        acc.n += n

    micro = None
    if aggregation in ("sum", "avg") and rows.numbers is not None:
        micro = _micro(rows.numbers)
        totals = _sums(micro, groups.order, groups.starts)
        for acc, total in zip(accumulators, totals, strict=True):
            acc.sum += total
    elif aggregation in ("min", "max") and rows.numbers is not None:
        reduce = np.minimum if aggregation == "min" else np.maximum
        extremes = reduce.reduceat(rows.numbers[groups.order], groups.starts).tolist()
        for acc, value in zip(accumulators, extremes, strict=True):
            if aggregation == "min":
                acc.min = value if acc.min is None else min(acc.min, value)
            else:
                acc.max = value if acc.max is None else max(acc.max, value)
    elif aggregation in ("first", "last", "days_since"):
        _merge_stamped(aggregation == "first", batch, rows, groups, accumulators)

    if feature.days:
        _merge_hours(feature, batch, rows, profile, micro, accumulators, groups)


def _micro(numbers: npt.NDArray[np.float64]) -> list[int] | Int64s:
    # Python's round() of each number, as the per-event update does (ties to even, like
    # np.rint); the products are exact in float64 either way
    scaled = numbers * MICRO
    if len(scaled) and float(np.abs(scaled).max()) * len(scaled) >= _SAFE_MICRO:
        return [round(float(x) * MICRO) for x in numbers.tolist()]
    return np.rint(scaled).astype(np.int64)


def _sums(micro: list[int] | Int64s, order: Int64s, starts: Int64s) -> list[int]:
    """Sum of ``micro`` over each group of rows (``order`` sorts them, ``starts`` opens each)."""
    if isinstance(micro, list):
        ordered = [micro[i] for i in order.tolist()]
        bounds = [*starts.tolist(), len(ordered)]
        return [sum(ordered[a:b]) for a, b in itertools.pairwise(bounds)]
    return [int(x) for x in np.add.reduceat(micro[order], starts).tolist()]


def _merge_stamped(
    first: bool,
    batch: ProfileBatch,
    rows: _Rows,
    groups: Groups,
    accumulators: list[Accumulator],
) -> None:
    # the extreme (time, messageId) of each group: sort rows by group, then time, then id
    event = rows.event
    group_of = np.repeat(np.arange(len(groups.starts)), groups.sizes(len(event)))
    sorted_rows = groups.order
    ts = batch.ts[event[sorted_rows]]
    mid = batch.mid_rank[event[sorted_rows]]
    within = np.lexsort((mid, ts, group_of))
    ends = np.append(groups.starts[1:], len(event)) - 1
    picks = within[groups.starts] if first else within[ends]
    values = rows.values
    for acc, pick in zip(accumulators, sorted_rows[picks].tolist(), strict=True):
        row = int(event[pick])
        source = batch.events[row]
        stamped = Stamped(source.ts, source.message_id, values[pick] if values else None)
        if first:
            acc.first = earliest(acc.first, stamped)
        else:
            acc.last = latest(acc.last, stamped)


def _merge_hours(
    feature: CompiledFeature,
    batch: ProfileBatch,
    rows: _Rows,
    profile: Int64s,
    micro: list[int] | Int64s | None,
    accumulators: list[Accumulator],
    groups: Groups,
) -> None:
    aggregation = feature.definition.aggregation
    event = rows.event
    hour = batch.hour[event]
    latest_hour = batch.latest_ms // MS_PER_HOUR
    kept = np.flatnonzero(hour > latest_hour[profile] - feature.keep_hours)
    if not len(kept):
        return
    # each row's accumulator, by the (profile, key) group it fell in
    group_index = np.empty(len(event), dtype=np.int64)
    group_index[groups.order] = np.repeat(np.arange(len(groups.starts)), groups.sizes(len(event)))
    hourly = group_rows(group_index[kept], hour[kept])
    firsts = kept[hourly.firsts]
    owners = group_index[firsts].tolist()
    hours = [str(h) for h in hour[firsts].tolist()]
    order = kept[hourly.order]
    if aggregation in ("count", "avg"):
        counts = hourly.sizes(len(kept)).tolist()
        for owner, text, count in zip(owners, hours, counts, strict=True):
            bucket = accumulators[owner].hours
            bucket[text] = bucket.get(text, 0) + count
    if aggregation in ("sum", "avg") and micro is not None:
        totals = _sums(micro, order, hourly.starts)
        for owner, text, total in zip(owners, hours, totals, strict=True):
            bucket = accumulators[owner].hour_sum
            bucket[text] = bucket.get(text, 0) + total
    elif aggregation in ("min", "max") and rows.numbers is not None:
        reduce = np.minimum if aggregation == "min" else np.maximum
        extremes = reduce.reduceat(rows.numbers[order], hourly.starts).tolist()
        pick = min if aggregation == "min" else max
        for owner, text, value in zip(owners, hours, extremes, strict=True):
            acc = accumulators[owner]
            bucket = acc.hour_min if aggregation == "min" else acc.hour_max
            mine = bucket.get(text)
            bucket[text] = value if mine is None else pick(mine, value)
