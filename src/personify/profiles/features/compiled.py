"""Definitions compiled once into what the update and the evaluation run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from personify.errors import ConfigurationError
from personify.profiles.events import MS_PER_DAY, ProfileEvent
from personify.profiles.features.definitions import (
    FEATURE_NAME,
    MAX_WINDOW_DAYS,
    MICRO,
    RESERVED_NAMES,
    VALUE_AGGREGATIONS,
    AffinityRule,
    FeatureDefinition,
    ProfileConfig,
)
from personify.profiles.features.paths import (
    PathSpec,
    PropertyFilter,
    as_number,
    compile_path,
    compile_where,
    event_names,
)


@dataclass(frozen=True, slots=True)
class CompiledFeature:
    """A definition made ready for the hot path."""

    definition: FeatureDefinition
    names: frozenset[str] | None
    where: tuple[PropertyFilter, ...]
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
    where: tuple[PropertyFilter, ...]
    paths: tuple[PathSpec, ...]
    weight_micro: int


def compile_feature(definition: FeatureDefinition) -> CompiledFeature:
    """Check a definition and index it; raises ``ConfigurationError`` naming what is wrong."""
    name = definition.name

    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(f"feature {name!r}: {reason}", code="invalid_features")

    if not FEATURE_NAME.match(name):
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
        if not 1 <= window <= MAX_WINDOW_DAYS:
            raise bad(f"window {window} must be between 1 and {MAX_WINDOW_DAYS} days")
        days.append(window)
    paths = definition.property
    properties = tuple(
        compile_path(p) for p in ([paths] if isinstance(paths, str) else paths or [])
    )
    if definition.aggregation in VALUE_AGGREGATIONS and not properties:
        raise bad(f"aggregation {definition.aggregation!r} needs a property")
    if definition.aggregation == "first" and days:
        raise bad("aggregation 'first' supports only the 'all' window")
    group_by = compile_path(definition.group_by) if definition.group_by else None
    return CompiledFeature(
        definition=definition,
        names=event_names(definition.event),
        where=compile_where(definition.where),
        properties=properties,
        group_by=group_by,
        days=tuple(sorted(set(days))),
        # one spare day covers the clock tolerance between an event's time and "now"
        keep_hours=(max(days) + 1) * 24 if days else 0,
    )


def compile_rule(rule: AffinityRule) -> CompiledRule:
    """Check an affinity rule and index it."""
    if not FEATURE_NAME.match(rule.dimension):
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
        names=event_names(rule.event),
        where=compile_where(rule.where),
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
