"""The JSON condition language of rule segments as a typed tree, and the event counters its
event leaves need.

``personify.segments.validation.parse_condition`` builds the tree from JSON (checking it);
``personify.segments.operators`` defines the operators exactly; ``docs/segments.md``
describes the language with examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from personify.profiles.counters import PropertyColumn
from personify.segments.operators import (
    MISSING,
    build_test,
    evaluate_column,
    factorize,
)

__all__ = [
    "MAX_PATH_CHARS",
    "MAX_WINDOW_MS",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "EventCounter",
    "EventLeaf",
    "Not",
    "PropertyFilter",
    "SegmentLeaf",
    "ValueLeaf",
    "json_pointer",
    "parse_window_ms",
    "resolve_path",
]

MAX_PATH_CHARS: Final = 500
MAX_WINDOW_MS: Final = 3660 * 86_400_000  # ten years and a bit

_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhdw])")
_UNIT_MS: Final = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


# the track events the worker appends when a profile enters or exits a segment
SEGMENT_ENTERED = "Segment Entered"
SEGMENT_EXITED = "Segment Exited"
MEMBERSHIP_EVENTS = frozenset({SEGMENT_ENTERED, SEGMENT_EXITED})


def json_pointer(parts: tuple[str | int, ...]) -> str:
    """The RFC 6901 pointer of a location (``~`` is written ``~0`` and ``/`` is ``~1``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def parse_window_ms(text: Any) -> int | None:
    """A window such as ``30m``, ``12h``, ``7d`` or ``2w`` in milliseconds (``None`` when it
    cannot be read or is over ten years)."""
    if not isinstance(text, str):
        return None
    match = _WINDOW.fullmatch(text)
    if match is None:
        return None
    window_ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    return window_ms if window_ms <= MAX_WINDOW_MS else None


def _path_parts(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def resolve_path(root: Any, parts: tuple[str, ...]) -> Any:
    """The value at a dotted path, or ``MISSING``. At each level the longest run of parts that
    is a key wins, so a key that itself holds dots (``v1.2``) is still reachable."""
    if len(parts) == 1:
        # a decoded JSON object is a dict: the common case skips the ABC check
        if type(root) is dict or isinstance(root, Mapping):
            return root.get(parts[0], MISSING)
        return MISSING
    node = root
    i = 0
    while i < len(parts):
        if type(node) is not dict and not isinstance(node, Mapping):
            return MISSING
        for j in range(len(parts), i, -1):
            key = parts[i] if j == i + 1 else ".".join(parts[i:j])
            if key in node:
                node = node[key]
                i = j
                break
        else:
            return MISSING
    return node


@dataclass(frozen=True, slots=True)
class Comparison:
    """An operator with its canonical operand (``None`` for ``exists``)."""

    op: str
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON of the comparison."""
        if self.op == "exists":
            return {"op": self.op}
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"op": self.op, "value": value}


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    """One ``where`` item of an event leaf: a dotted path into ``properties``."""

    path: str
    comparison: Comparison

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON of the filter."""
        return {"property": self.path, **self.comparison.to_json()}


@dataclass(frozen=True, slots=True)
class EventCounter:
    """The events an event leaf counts: a name, ``where`` filters (all must hold) and a window.

    ``id`` is a hash of the canonical JSON, so two leaves (in any segments) that count the
    same events share one counter: filters in any order, ``7d`` or ``168h``, give one id.
    An event at ``ts_ms`` is inside the window at ``at_ms`` when ``at_ms - within_ms < ts_ms
    <= at_ms`` (all time: ``ts_ms <= at_ms``); events after ``at_ms`` never count.
    """

    event: str
    where: tuple[PropertyFilter, ...]
    within_ms: int | None
    id: str = field(init=False)
    # equal for counters that count the same events and differ only in their window
    match_id: str = field(init=False, repr=False, compare=False)
    _tests: tuple[tuple[tuple[str, ...], Any], ...] = field(init=False, repr=False, compare=False)
    _filters: tuple[tuple[PropertyFilter, tuple[str, ...], Any], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        object.__setattr__(self, "id", hashlib.sha256(text.encode()).hexdigest()[:16])
        what = {"event": self.event, "where": [f.to_json() for f in self.where]}
        text = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        object.__setattr__(self, "match_id", hashlib.sha256(text.encode()).hexdigest()[:16])
        tests = tuple(
            (_path_parts(f.path), build_test(f.comparison.op, f.comparison.value))
            for f in self.where
        )
        object.__setattr__(self, "_tests", tests)
        filters = tuple(
            (f, parts, test) for f, (parts, test) in zip(self.where, tests, strict=True)
        )
        object.__setattr__(self, "_filters", filters)

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON the id is the hash of."""
        return {
            "event": self.event,
            "where": [f.to_json() for f in self.where],
            "within_ms": self.within_ms,
        }

    def matches(self, name: str, properties: Mapping[str, Any] | None) -> bool:
        """Whether an event of this name (a track's event name, ``$page`` … for the other
        types, as ``personify.profiles.events.event_name`` gives) and properties counts."""
        if self.event != "*" and name != self.event:
            return False
        props = properties if properties is not None else {}
        tests = self._tests
        if len(tests) == 1:
            # one filter is the common case: no generator
            parts, test = tests[0]
            return bool(test(resolve_path(props, parts)))
        return all(test(resolve_path(props, parts)) for parts, test in tests)

    def match_column(self, name: str, column: PropertyColumn) -> npt.NDArray[np.bool_]:
        """Which events of a column (all named ``name``) count: ``matches`` of each, with
        each property read once per column and each filter tested once per distinct value
        (the column keeps both for the other counters that read them)."""
        if self.event != "*" and name != self.event:
            return np.zeros(len(column.properties), np.bool_)
        mask: npt.NDArray[np.bool_] | None = None
        memo = column.memo
        for spec, parts, test in self._filters:
            found = memo.get(spec)
            if found is None:
                values = memo.get(parts)
                if values is None:
                    values = memo[parts] = factorize(
                        [
                            MISSING if props is None else resolve_path(props, parts)
                            for props in column.properties
                        ]
                    )
                found = memo[spec] = evaluate_column(values, test)
            mask = found if mask is None else mask & found
        return mask if mask is not None else np.ones(len(column.properties), np.bool_)

    def covers(self, ts_ms: int, at_ms: int) -> bool:
        """Whether an event at ``ts_ms`` is inside the window at ``at_ms``."""
        if ts_ms > at_ms:
            return False
        return self.within_ms is None or ts_ms > at_ms - self.within_ms


@dataclass(frozen=True, slots=True)
class ValueLeaf:
    """A trait, profile feature or prediction compared with a value."""

    source: str  # "trait", "feature" or "prediction"
    path: str
    comparison: Comparison


@dataclass(frozen=True, slots=True)
class EventLeaf:
    """How many events a counter holds, compared with a whole number."""

    counter: EventCounter
    count: Comparison


@dataclass(frozen=True, slots=True)
class SegmentLeaf:
    """Membership of another segment."""

    key: str


@dataclass(frozen=True, slots=True)
class AllOf:
    """True when every child is."""

    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """True when at least one child is."""

    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """True when the child is not."""

    child: Condition


Condition = ValueLeaf | EventLeaf | SegmentLeaf | AllOf | AnyOf | Not
