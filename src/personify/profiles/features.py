"""Declarative behavioural features: definitions, their per-event update, their read-time value.

A feature definition names the events it reads (a track's event name; ``$page``, ``$screen``,
``$identify``, ``$group``, ``$alias`` for the other types; ``*`` for every event), an
optional property filter (``where``), an aggregation (``count``, ``sum``, ``avg``, ``min``,
``max``, ``first``, ``last``, ``days_since``), the property it aggregates (dotted paths,
the first one present wins), an optional ``group_by`` path, and the windows it reports
(whole days, or ``all``). Definitions come from the file ``PERSONIFY_FEATURES_FILE`` (YAML,
JSON or TOML) on top of ``DEFAULT_FEATURES``; adding "count of Video Played in 7 d" is::

    features:
      - {name: video_plays, event: Video Played, aggregation: count, windows: [7]}

Everything here is a pure function of ``(state, event)`` (``update_features``,
``update_affinities``) or of ``(state, as_of)`` (``evaluate_features``,
``evaluate_affinities``), so the stream worker and a batch recomputation over the lake give
the same numbers. Every update is commutative and associative: sums are integers in
micro-units, min/max are exact, ``first``/``last`` are min/max by (event time, messageId),
and windowed values are summed at read time from hourly buckets (UTC) relative to
``as_of``. A late or out-of-order event lands in its own hour, hence in the right window,
and two profiles merge by adding their states (``merge_features``).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from personify.errors import ConfigurationError
from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, ProfileEvent, format_ms

Aggregation = Literal["count", "sum", "avg", "min", "max", "first", "last", "days_since"]
Window = int | Literal["all"]

MICRO = 1_000_000  # sums are kept as integers of millionths, so addition order cannot show
_MAX_NUMBER = 1e15
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_WINDOW_DAYS = 366
_MAX_GROUP_CHARS = 200
_MAX_AFFINITY_VALUE_CHARS = 100
_VALUE_AGGREGATIONS = frozenset({"sum", "avg", "min", "max"})
_STAMPED_AGGREGATIONS = frozenset({"first", "last", "days_since"})

# Names the built-in part of the profile uses under ``features``; definitions cannot take them.
RESERVED_NAMES = frozenset(
    {
        "first_seen",
        "last_seen",
        "recency_days",
        "events_total",
        "last_events",
        "sessions",
        "affinities",
        "context",
    }
)


class FeatureDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One declarative feature: which events, which filter, which aggregation, which windows."""

    name: str
    event: str | list[str] = "*"
    where: dict[str, Any] = {}
    aggregation: Aggregation = "count"
    property: str | list[str] | None = None
    group_by: str | None = None
    windows: list[Window] = msgspec.field(default_factory=lambda: ["all"])
    description: str = ""


class AffinityRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Engagement that adds ``weight`` to the affinity for each value found at ``paths``."""

    dimension: str
    event: str | list[str] = "*"
    paths: list[str]
    weight: float = 1.0
    where: dict[str, Any] = {}


def _windows(*days: int) -> list[Window]:
    return [*days, "all"]


DEFAULT_FEATURES: tuple[FeatureDefinition, ...] = (
    FeatureDefinition(
        name="event_counts",
        group_by="$event",
        windows=_windows(1, 7, 30),
        description="events per event name",
    ),
    FeatureDefinition(
        name="orders",
        event="Order Completed",
        windows=_windows(7, 30),
        description="completed orders (Segment e-commerce spec)",
    ),
    FeatureDefinition(
        name="revenue",
        event="Order Completed",
        aggregation="sum",
        property=["properties.revenue", "properties.total"],
        windows=_windows(30),
        description="order revenue, or total when revenue is absent",
    ),
    FeatureDefinition(
        name="average_order_value",
        event="Order Completed",
        aggregation="avg",
        property=["properties.revenue", "properties.total"],
        description="mean revenue per order",
    ),
    FeatureDefinition(
        name="days_since_last_order",
        event="Order Completed",
        aggregation="days_since",
        description="days between the last order and now",
    ),
    FeatureDefinition(
        name="last_order_at",
        event="Order Completed",
        aggregation="last",
        description="time of the last order",
    ),
)

_PRODUCT_EVENTS = ["Product Viewed", "Product Clicked", "Product Added to Wishlist"]
DEFAULT_AFFINITY_RULES: tuple[AffinityRule, ...] = (
    AffinityRule(
        dimension="product_category", event=_PRODUCT_EVENTS, paths=["properties.category"]
    ),
    AffinityRule(
        dimension="product_category",
        event="Product List Viewed",
        paths=["properties.category"],
        weight=0.5,
    ),
    AffinityRule(
        dimension="product_category",
        event="Product Added",
        paths=["properties.category"],
        weight=3.0,
    ),
    AffinityRule(
        dimension="product_category",
        event="Order Completed",
        paths=["properties.products[].category"],
        weight=5.0,
    ),
    AffinityRule(
        dimension="content_category",
        event=["$page", "$screen", "Content Viewed", "Article Viewed", "Video Played"],
        paths=["properties.category"],
    ),
    AffinityRule(dimension="tag", paths=["properties.tags[]"]),
)


class ProfileConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything that decides how events become a profile (the features file's schema)."""

    include_default_features: bool = True
    features: list[FeatureDefinition] = []
    affinity_rules: list[AffinityRule] | None = None
    affinity_half_life_days: float = 14.0
    affinity_retention_days: int = 180
    session_gap_minutes: float = 30.0
    session_retention_days: int = 90
    consent_categories: list[str] = msgspec.field(
        default_factory=lambda: ["personalization", "personalisation"]
    )

    def definitions(self) -> list[FeatureDefinition]:
        """Defaults (unless switched off) with the file's definitions; same name replaces."""
        chosen: dict[str, FeatureDefinition] = {}
        if self.include_default_features:
            chosen.update((d.name, d) for d in DEFAULT_FEATURES)
        chosen.update((d.name, d) for d in self.features)
        return list(chosen.values())

    def rules(self) -> list[AffinityRule]:
        """The affinity rules: the file's, or the defaults."""
        return list(DEFAULT_AFFINITY_RULES if self.affinity_rules is None else self.affinity_rules)


# -- paths -------------------------------------------------------------------------------------


class PathSpec:
    """A compiled property path: ``properties.products[].category``, ``$event`` or ``$type``.

    ``$event`` is the event's name (see ``event_name``), ``$type`` its type; a ``[]`` after
    a key walks the list found there. ``values`` returns every value found (none when the
    path is missing or null).
    """

    __slots__ = ("parts", "text", "values")

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        parts: list[tuple[str, bool]] = []
        for raw in self.text.split("."):
            iterate = raw.endswith("[]")
            key = raw[:-2] if iterate else raw
            if not key:
                raise ConfigurationError(f"invalid property path {text!r}", code="invalid_features")
            parts.append((key, iterate))
        self.parts = tuple(parts)
        if self.text == "$event":
            self.values = _event_name_value
        elif self.text == "$type":
            self.values = _event_type_value
        elif not any(iterate for _, iterate in parts):
            self.values = self._simple
        elif not any(iterate for _, iterate in parts[:-1]):
            self.values = self._list_at_end
        else:
            self.values = self._walk

    def _simple(self, event: ProfileEvent) -> list[Any]:
        value: Any = event.data
        for key, _ in self.parts:
            if type(value) is not dict:
                return []
            value = value.get(key)
        return [] if value is None else [value]

    def _list_at_end(self, event: ProfileEvent) -> list[Any]:
        value: Any = event.data
        for key, _ in self.parts:
            if type(value) is not dict:
                return []
            value = value.get(key)
        if value is None:
            return []
        if type(value) is list:
            return [v for v in value if v is not None]
        return [value]

    def _walk(self, event: ProfileEvent) -> list[Any]:
        return resolve_path(event.data, self.parts)


def _event_name_value(event: ProfileEvent) -> list[Any]:
    return [event.name]


def _event_type_value(event: ProfileEvent) -> list[Any]:
    return [event.type]


def compile_path(text: str) -> PathSpec:
    """Compile a dotted path once, for the hot path."""
    return PathSpec(text)


def resolve_path(data: Mapping[str, Any], parts: Sequence[tuple[str, bool]]) -> list[Any]:
    """Every value at ``parts`` (lists marked to iterate are walked); missing or null: none."""
    current: list[Any] = [data]
    for key, iterate in parts:
        found: list[Any] = []
        for item in current:
            if type(item) is not dict and not isinstance(item, Mapping):
                continue
            value = item.get(key)
            if value is None:
                continue
            if iterate and isinstance(value, list):
                found.extend(v for v in value if v is not None)
            else:
                found.append(value)
        if not found:
            return found
        current = found
    return current


def as_number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric string; anything else is ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # compared as an int first: float() of a JSON integer beyond a double raises
        if abs(value) > _MAX_NUMBER:
            return None
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number) or abs(number) > _MAX_NUMBER:
        return None
    return number


def _event_names(spec: str | list[str]) -> frozenset[str] | None:
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigurationError("event must name at least one event", code="invalid_features")
    if "*" in names:
        return None
    return frozenset(n.strip() for n in names)


@dataclass(frozen=True, slots=True)
class _Filter:
    path: PathSpec
    accepted: tuple[Any, ...]

    def matches(self, event: ProfileEvent) -> bool:
        return any(v in self.accepted for v in self.path.values(event))


def _compile_where(where: Mapping[str, Any]) -> tuple[_Filter, ...]:
    filters = []
    for path, expected in where.items():
        accepted = tuple(expected) if isinstance(expected, list) else (expected,)
        filters.append(_Filter(compile_path(path), accepted))
    return tuple(filters)


# -- state -------------------------------------------------------------------------------------


class Stamped(msgspec.Struct, array_like=True):
    """A value with the (event time, messageId) that last-writer-wins orders by."""

    ts: int
    mid: str
    value: Any = None


def latest(a: Stamped | None, b: Stamped | None) -> Stamped | None:
    """The later of two stamped values (commutative, associative, idempotent)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if (a.ts, a.mid) >= (b.ts, b.mid) else b


def earliest(a: Stamped | None, b: Stamped | None) -> Stamped | None:
    """The earlier of two stamped values."""
    if a is None:
        return b
    if b is None:
        return a
    return a if (a.ts, a.mid) <= (b.ts, b.mid) else b


class Accumulator(msgspec.Struct, omit_defaults=True):
    """One feature (one group of it): all-time totals plus hourly buckets for finite windows."""

    n: int = 0
    sum: int = 0
    min: float | None = None
    max: float | None = None
    first: Stamped | None = None
    last: Stamped | None = None
    hours: dict[str, int] = {}
    hour_sum: dict[str, int] = {}
    hour_min: dict[str, float] = {}
    hour_max: dict[str, float] = {}


FeatureState = dict[str, dict[str, Accumulator]]  # definition name -> group -> accumulator
AffinityState = dict[str, dict[str, dict[str, int]]]  # dimension -> value -> UTC day -> micro


@dataclass(frozen=True, slots=True)
class CompiledFeature:
    """A definition made ready for the hot path."""

    definition: FeatureDefinition
    names: frozenset[str] | None
    where: tuple[_Filter, ...]
    properties: tuple[PathSpec, ...]
    group_by: PathSpec | None
    days: tuple[int, ...]
    keep_hours: int

    @property
    def name(self) -> str:
        """The definition's name."""
        return self.definition.name

    def value_of(self, event: ProfileEvent) -> tuple[bool, Any]:
        """``(present, value)``: the first property path that holds a value."""
        for path in self.properties:
            found = path.values(event)
            if found:
                return True, found[0]
        return False, None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """An affinity rule made ready for the hot path."""

    rule: AffinityRule
    names: frozenset[str] | None
    where: tuple[_Filter, ...]
    paths: tuple[PathSpec, ...]
    weight_micro: int


def compile_feature(definition: FeatureDefinition) -> CompiledFeature:
    """Check a definition and index it; raises ``ConfigurationError`` naming what is wrong."""
    name = definition.name

    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(f"feature {name!r}: {reason}", code="invalid_features")

    if not _NAME.match(name):
        raise bad("a name is lower_snake_case, starting with a letter, at most 64 characters")
    if name in RESERVED_NAMES:
        raise bad(f"the name is reserved (reserved: {sorted(RESERVED_NAMES)})")
    if not definition.windows:
        raise bad("give at least one window (days, or 'all')")
    days: list[int] = []
    for window in definition.windows:
        if window == "all":
            continue
        if isinstance(window, bool) or not isinstance(window, int):
            raise bad(f"window {window!r} is not a whole number of days or 'all'")
        if not 1 <= window <= _MAX_WINDOW_DAYS:
            raise bad(f"window {window} must be between 1 and {_MAX_WINDOW_DAYS} days")
        days.append(window)
    paths = definition.property
    properties = tuple(
        compile_path(p) for p in ([paths] if isinstance(paths, str) else paths or [])
    )
    if definition.aggregation in _VALUE_AGGREGATIONS and not properties:
        raise bad(f"aggregation {definition.aggregation!r} needs a property")
    if definition.aggregation == "first" and days:
        raise bad("aggregation 'first' supports only the 'all' window")
    group_by = compile_path(definition.group_by) if definition.group_by else None
    return CompiledFeature(
        definition=definition,
        names=_event_names(definition.event),
        where=_compile_where(definition.where),
        properties=properties,
        group_by=group_by,
        days=tuple(sorted(set(days))),
        # one spare day covers the clock tolerance between an event's time and "now"
        keep_hours=(max(days) + 1) * 24 if days else 0,
    )


def compile_rule(rule: AffinityRule) -> CompiledRule:
    """Check an affinity rule and index it."""
    if not _NAME.match(rule.dimension):
        raise ConfigurationError(
            f"affinity dimension {rule.dimension!r} must be lower_snake_case",
            code="invalid_features",
        )
    if not rule.paths:
        raise ConfigurationError(
            f"affinity rule for {rule.dimension!r} names no paths", code="invalid_features"
        )
    weight = as_number(rule.weight)
    if weight is None or weight <= 0:
        raise ConfigurationError(
            f"affinity rule for {rule.dimension!r}: weight must be a positive number",
            code="invalid_features",
        )
    return CompiledRule(
        rule=rule,
        names=_event_names(rule.event),
        where=_compile_where(rule.where),
        paths=tuple(compile_path(p) for p in rule.paths),
        weight_micro=round(weight * MICRO),
    )


class FeatureSet:
    """A ``ProfileConfig`` compiled and indexed by event name for the per-event update."""

    def __init__(self, config: ProfileConfig | None = None) -> None:
        self.config = config or ProfileConfig()
        definitions = self.config.definitions()
        self.features = tuple(compile_feature(d) for d in definitions)
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ConfigurationError("feature names must be unique", code="invalid_features")
        self.rules = tuple(compile_rule(r) for r in self.config.rules())
        if self.config.affinity_half_life_days <= 0 or self.config.session_gap_minutes <= 0:
            raise ConfigurationError(
                "affinity_half_life_days and session_gap_minutes must be positive",
                code="invalid_features",
            )
        self.session_gap_ms = round(self.config.session_gap_minutes * 60_000)
        self.session_retention_ms = self.config.session_retention_days * MS_PER_DAY
        self.affinity_keep_days = self.config.affinity_retention_days
        self.half_life_ms = self.config.affinity_half_life_days * MS_PER_DAY
        self.consent_categories = frozenset(
            c.strip().lower() for c in self.config.consent_categories
        )
        self.by_name = {f.name: f for f in self.features}
        self._features_by_name = _index(self.features)
        self._rules_by_name = _index(self.rules)

    def features_for(self, name: str) -> Sequence[CompiledFeature]:
        """The definitions that may read an event of this name (filters still apply)."""
        return self._features_by_name.get(name) or self._features_by_name.get("*", ())

    def rules_for(self, name: str) -> Sequence[CompiledRule]:
        """The affinity rules that may read an event of this name."""
        return self._rules_by_name.get(name) or self._rules_by_name.get("*", ())


_Compiled = TypeVar("_Compiled", CompiledFeature, CompiledRule)


def _index(items: Iterable[_Compiled]) -> dict[str, tuple[_Compiled, ...]]:
    items = tuple(items)
    wildcard = tuple(i for i in items if i.names is None)
    named: dict[str, list[_Compiled]] = {}
    for item in items:
        for name in item.names or ():
            named.setdefault(name, []).append(item)
    index: dict[str, tuple[_Compiled, ...]] = {"*": wildcard}
    for name, own in named.items():
        index[name] = tuple(i for i in items if i.names is None or i in own)
    return index


def load_profile_config(path: Path | None) -> ProfileConfig:
    """The profile config from a YAML, JSON or TOML file, or the defaults when ``path`` is None."""
    if path is None:
        return ProfileConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read PERSONIFY_FEATURES_FILE {path}: {exc}", code="invalid_features"
        ) from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{path} is not valid JSON: {exc}", code="invalid_features"
            ) from exc
    elif suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(
                f"{path} is not valid TOML: {exc}", code="invalid_features"
            ) from exc
    elif suffix in (".yaml", ".yml"):
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError as exc:
            raise ConfigurationError(
                "a YAML features file needs PyYAML (pip install pyyaml); or use JSON or TOML",
                code="missing_extra",
            ) from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"{path} is not valid YAML: {exc}", code="invalid_features"
            ) from exc
    else:
        raise ConfigurationError(
            f"{path}: the features file must end in .yaml, .yml, .json or .toml",
            code="invalid_features",
        )
    try:
        config = msgspec.convert(raw or {}, ProfileConfig)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{path}: {exc}", code="invalid_features") from exc
    FeatureSet(config)  # validate every definition now, not on the first event
    return config


# -- the per-event update ----------------------------------------------------------------------


def _group_keys(feature: CompiledFeature, event: ProfileEvent) -> list[str]:
    if feature.group_by is None:
        return [""]
    if feature.group_by.text == "$event":
        return [event.name[:_MAX_GROUP_CHARS]]
    keys = []
    for value in feature.group_by.values(event):
        if isinstance(value, str | int | float | bool):
            keys.append(str(value)[:_MAX_GROUP_CHARS])
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
            if aggregation in _VALUE_AGGREGATIONS:
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
            if aggregation in _STAMPED_AGGREGATIONS
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
                    text = str(value).strip().lower()[:_MAX_AFFINITY_VALUE_CHARS]
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


# -- read-time evaluation ----------------------------------------------------------------------


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


def evaluate_features(state: FeatureState, features: FeatureSet, as_of_ms: int) -> dict[str, Any]:
    """Every definition's value per window at ``as_of_ms`` (grouped ones nest by group)."""
    result: dict[str, Any] = {}
    for feature in features.features:
        groups = state.get(feature.name, {})
        if feature.group_by is None:
            result[feature.name] = _feature_values(feature, groups.get(""), as_of_ms)
        else:
            result[feature.name] = {
                key: _feature_values(feature, groups[key], as_of_ms) for key in sorted(groups)
            }
    return result


def evaluate_affinities(
    state: AffinityState,
    features: FeatureSet,
    as_of_ms: int,
    *,
    latest_ms: int,
    top: int = 20,
) -> dict[str, dict[str, float]]:
    """Decayed scores: each day's weight halves every ``affinity_half_life_days`` behind as_of.

    Days beyond the retention behind ``latest_ms`` (the profile's latest event) count for
    nothing, whether or not they were compacted away yet.
    """
    result: dict[str, dict[str, float]] = {}
    half_life = features.half_life_ms
    oldest = latest_ms // MS_PER_DAY - features.affinity_keep_days
    for dimension in sorted(state):
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
