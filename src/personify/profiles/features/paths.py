"""Dotted paths into an event and ``where`` filters, compiled once per definition."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personify.errors import ConfigurationError
from personify.profiles.events import ProfileEvent
from personify.profiles.features.definitions import MAX_NUMBER


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
        if abs(value) > MAX_NUMBER:
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
    if not math.isfinite(number) or abs(number) > MAX_NUMBER:
        return None
    return number


def event_names(spec: str | list[str]) -> frozenset[str] | None:
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigurationError("event must name at least one event", code="invalid_features")
    if "*" in names:
        return None
    return frozenset(n.strip() for n in names)


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    path: PathSpec
    accepted: tuple[Any, ...]

    def matches(self, event: ProfileEvent) -> bool:
        return any(v in self.accepted for v in self.path.values(event))


def compile_where(where: Mapping[str, Any]) -> tuple[PropertyFilter, ...]:
    filters = []
    for path, expected in where.items():
        accepted = tuple(expected) if isinstance(expected, list) else (expected,)
        filters.append(PropertyFilter(compile_path(path), accepted))
    return tuple(filters)
