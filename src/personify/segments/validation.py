"""Validation of a condition as saved: every problem found, each with its JSON pointer.

``parse_condition`` either returns the condition's tree or raises one ``InvalidDefinition``
(code ``invalid_condition``) whose ``details["errors"]`` lists **every** problem, each
``{"pointer", "code", "message"}`` with an RFC 6901 pointer into the condition
(``/all/1/where/0/op``); a ``segment_cycle`` problem also holds the loop in ``cycle``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from personify.errors import InvalidDefinition
from personify.segments.conditions import (
    MAX_PATH_CHARS,
    MEMBERSHIP_EVENTS,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    EventCounter,
    EventLeaf,
    Not,
    PropertyFilter,
    SegmentLeaf,
    ValueLeaf,
    json_pointer,
    parse_window_ms,
)
from personify.segments.operators import (
    COUNT_OPERATORS,
    OPERATORS,
    canonical_operand,
    check_operand,
)

__all__ = ["MAX_DEPTH", "MAX_LEAVES", "MAX_WHERE", "event_counters", "parse_condition"]

# how many combinators may nest: deep enough for any hand-written rule, shallow enough that
# compiling and evaluating never approach Python's recursion limit
MAX_DEPTH: Final = 16
# leaves (trait, feature, event, segment, prediction) in one condition
MAX_LEAVES: Final = 500
MAX_WHERE: Final = 32
_NODE_KINDS: Final = ("all", "any", "not", "trait", "feature", "event", "segment", "prediction")

Location = tuple[str | int, ...]


class _Parser:
    """One pass over a condition that records every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[dict[str, Any]] = []
        self.leaves = 0
        self.segment_refs: list[tuple[str, Location]] = []

    def problem(self, at: Location, code: str, message: str) -> None:
        self.problems.append({"pointer": json_pointer(at), "code": code, "message": message})

    def keys(
        self,
        node: Mapping[str, Any],
        at: Location,
        required: tuple[str, ...],
        optional: tuple[str, ...],
    ) -> bool:
        """Report unknown and missing keys; ``False`` when a required one is missing."""
        allowed = set(required) | set(optional)
        for key in node:
            if key not in allowed:
                self.problem((*at, str(key)), "unknown_key", f"unknown key {key!r}")
        complete = True
        for key in required:
            if key not in node:
                self.problem(at, "missing_key", f"missing key {key!r}")
                complete = False
        return complete

    def path(self, node: Mapping[str, Any], key: str, at: Location) -> str | None:
        text = node[key]
        if (
            not isinstance(text, str)
            or not text
            or len(text) > MAX_PATH_CHARS
            or "" in text.split(".")
        ):
            self.problem(
                (*at, key),
                "invalid_path",
                f"{key} must be a dotted path such as 'a.b' (no empty parts, at most "
                f"{MAX_PATH_CHARS} characters)",
            )
            return None
        return text

    def comparison(
        self, node: Mapping[str, Any], at: Location, *, counts: bool = False
    ) -> Comparison | None:
        op = node.get("op")
        allowed = COUNT_OPERATORS if counts else OPERATORS
        if not isinstance(op, str) or op not in allowed:
            if op in OPERATORS:
                self.problem((*at, "op"), "operator_not_allowed", f"{op} does not apply to a count")
            else:
                self.problem(
                    (*at, "op"),
                    "unknown_operator",
                    f"unknown operator {op!r}; use one of {', '.join(allowed)}",
                )
            return None
        if op == "exists":
            if "value" in node:
                self.problem((*at, "value"), "unexpected_value", "exists takes no value")
                return None
            return Comparison("exists")
        if "value" not in node:
            self.problem(at, "missing_value", f"{op} needs a value")
            return None
        problem = check_operand(op, node["value"], counts=counts)
        if problem:
            self.problem((*at, "value"), "invalid_value", problem)
            return None
        return Comparison(op, canonical_operand(op, node["value"]))

    def node(self, node: Any, at: Location, depth: int) -> Condition | None:
        if not isinstance(node, Mapping):
            self.problem(at, "invalid_node", "a condition must be a JSON object")
            return None
        kinds = [k for k in _NODE_KINDS if k in node]
        if not kinds:
            self.problem(
                at, "unknown_node", f"a condition needs one of the keys {', '.join(_NODE_KINDS)}"
            )
            return None
        if len(kinds) > 1:
            self.problem(
                at, "ambiguous_node", f"a condition has one of {', '.join(kinds)}, not several"
            )
            return None
        kind = kinds[0]
        if kind in ("all", "any", "not"):
            return self.combinator(node, kind, at, depth)
        self.leaves += 1
        if self.leaves == MAX_LEAVES + 1:
            self.problem(
                at, "too_many_conditions", f"a condition holds at most {MAX_LEAVES} leaves"
            )
        if kind == "event":
            return self.event(node, at)
        if kind == "segment":
            if not self.keys(node, at, ("segment",), ()):
                return None
            key = node["segment"]
            if not isinstance(key, str) or not key or len(key) > MAX_PATH_CHARS:
                self.problem((*at, "segment"), "invalid_value", "segment must be a segment key")
                return None
            self.segment_refs.append((key, at))
            return SegmentLeaf(key)
        complete = self.keys(node, at, (kind, "op"), ("value",))
        path = self.path(node, kind, at)
        comparison = self.comparison(node, at) if "op" in node else None
        if not complete or path is None or comparison is None:
            return None
        return ValueLeaf(kind, path, comparison)

    def combinator(
        self, node: Mapping[str, Any], kind: str, at: Location, depth: int
    ) -> Condition | None:
        self.keys(node, at, (kind,), ())
        if depth >= MAX_DEPTH:
            self.problem(at, "too_deep", f"conditions nest at most {MAX_DEPTH} levels")
            return None
        value = node[kind]
        if kind == "not":
            child = self.node(value, (*at, "not"), depth + 1)
            return None if child is None else Not(child)
        if not isinstance(value, list):
            self.problem((*at, kind), "invalid_value", f"{kind} takes a list of conditions")
            return None
        if not value:
            self.problem((*at, kind), "empty_combinator", f"{kind} needs at least one condition")
            return None
        children = [self.node(child, (*at, kind, i), depth + 1) for i, child in enumerate(value)]
        if any(child is None for child in children):
            return None
        parts = tuple(c for c in children if c is not None)
        return AllOf(parts) if kind == "all" else AnyOf(parts)

    def event(self, node: Mapping[str, Any], at: Location) -> EventLeaf | None:
        ok = self.keys(node, at, ("event",), ("where", "within", "count"))
        name = node["event"]
        if not isinstance(name, str) or not name.strip():
            self.problem((*at, "event"), "invalid_value", "event must be an event name")
            ok = False
        elif name.strip() in MEMBERSHIP_EVENTS:
            # the worker appends these itself: a rule counting them could feed on its own
            # entries and exits, and flip on every one
            self.problem(
                (*at, "event"),
                "membership_event",
                f"{name.strip()!r} events are the segments' own; use a segment leaf "
                '({"segment": KEY}) to test membership',
            )
            ok = False
        within_ms = None
        if "within" in node:
            within_ms = parse_window_ms(node["within"])
            if within_ms is None:
                self.problem(
                    (*at, "within"),
                    "invalid_window",
                    f"cannot read the window {node['within']!r}: use a whole number and a unit "
                    "(s, m, h, d, w), such as 30m, 12h, 7d, up to ten years",
                )
                ok = False
        filters = self.where(node.get("where", []), (*at, "where"))
        count = Comparison("gte", 1)
        if "count" in node:
            raw = node["count"]
            if not isinstance(raw, Mapping):
                self.problem((*at, "count"), "invalid_value", 'count must be {"op", "value"}')
                ok = False
            else:
                count_ok = self.keys(raw, (*at, "count"), ("op",), ("value",))
                parsed = self.comparison(raw, (*at, "count"), counts=True) if "op" in raw else None
                if not count_ok or parsed is None:
                    ok = False
                else:
                    count = parsed
        if not ok or filters is None or not isinstance(name, str):
            return None
        unique = {json.dumps(f.to_json(), sort_keys=True): f for f in filters}
        where = tuple(unique[k] for k in sorted(unique))
        return EventLeaf(EventCounter(name.strip(), where, within_ms), count)

    def where(self, items: Any, at: Location) -> list[PropertyFilter] | None:
        if not isinstance(items, list):
            self.problem(at, "invalid_value", "where takes a list of property conditions")
            return None
        if len(items) > MAX_WHERE:
            self.problem(at, "invalid_value", f"where holds at most {MAX_WHERE} conditions")
            return None
        filters: list[PropertyFilter] = []
        ok = True
        for i, item in enumerate(items):
            item_at = (*at, i)
            if not isinstance(item, Mapping):
                self.problem(item_at, "invalid_node", "a property condition must be a JSON object")
                ok = False
                continue
            complete = self.keys(item, item_at, ("property", "op"), ("value",))
            path = self.path(item, "property", item_at) if "property" in item else None
            comparison = self.comparison(item, item_at) if "op" in item else None
            if not complete or path is None or comparison is None:
                ok = False
                continue
            filters.append(PropertyFilter(path, comparison))
        return filters if ok else None


def _raw_segment_refs(node: Any, depth: int = 0) -> Iterator[str]:
    """The segment keys a stored condition refers to (read leniently: it was valid once)."""
    if not isinstance(node, Mapping) or depth > MAX_DEPTH:
        return
    if isinstance(node.get("segment"), str):
        yield node["segment"]
    for kind in ("all", "any"):
        if isinstance(node.get(kind), list):
            for child in node[kind]:
                yield from _raw_segment_refs(child, depth + 1)
    if "not" in node:
        yield from _raw_segment_refs(node["not"], depth + 1)


def _find_cycle(
    start: str, key: str | None, segments: Mapping[str, Mapping[str, Any] | None]
) -> list[str] | None:
    """A cycle reachable from segment ``start`` (``key`` is the segment being saved: its
    references are the new ones, not whatever ``segments`` holds for it)."""
    path: list[str] = [] if key is None else [key]
    on_path = set(path)
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in on_path:
            return [*path[path.index(name) :], name]
        if name in done or name not in segments:
            return None
        path.append(name)
        on_path.add(name)
        for ref in _raw_segment_refs(segments[name]):
            found = visit(ref)
            if found:
                return found
        path.pop()
        on_path.discard(name)
        done.add(name)
        return None

    return visit(start)


def parse_condition(
    condition: Any,
    *,
    key: str | None = None,
    segments: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Condition:
    """Validate a condition and return its tree; raise ``InvalidDefinition`` listing every problem.

    With ``segments`` (every other segment's key and condition, ``None`` for a segment
    without a rule, such as a cluster), a reference to a key it lacks is ``unknown_segment``
    and a reference that leads back to ``key`` (the segment being saved) or into any other
    loop is ``segment_cycle``, with the loop in ``cycle``.
    """
    parser = _Parser()
    tree = parser.node(condition, (), 0)
    if segments is not None:
        for ref, at in parser.segment_refs:
            if ref != key and ref not in segments:
                parser.problem(at, "unknown_segment", f"no segment {ref!r}")
                continue
            cycle = _find_cycle(ref, key, segments)
            if cycle:
                parser.problem(
                    at,
                    "segment_cycle",
                    f"segments refer to each other in a loop: {' -> '.join(cycle)}",
                )
                parser.problems[-1]["cycle"] = cycle
    elif key is not None:
        for ref, at in parser.segment_refs:
            if ref == key:
                parser.problem(at, "segment_cycle", f"segment {key!r} refers to itself")
                parser.problems[-1]["cycle"] = [key, key]
    if parser.problems or tree is None:
        first = parser.problems[0]
        more = len(parser.problems) - 1
        message = f"invalid condition at {first['pointer'] or '/'}: {first['message']}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InvalidDefinition(
            message, code="invalid_condition", details={"errors": parser.problems}
        )
    return tree


def _leaves(tree: Condition) -> Iterator[Condition]:
    if isinstance(tree, AllOf | AnyOf):
        for child in tree.children:
            yield from _leaves(child)
    elif isinstance(tree, Not):
        yield from _leaves(tree.child)
    else:
        yield tree


def event_counters(condition: Any) -> tuple[EventCounter, ...]:
    """The distinct event counters a condition (raw JSON or a parsed tree) needs, in the order
    they first appear; raises ``InvalidDefinition`` for an invalid condition."""
    tree = (
        condition
        if isinstance(condition, ValueLeaf | EventLeaf | SegmentLeaf | AllOf | AnyOf | Not)
        else parse_condition(condition)
    )
    seen: dict[str, EventCounter] = {}
    for leaf in _leaves(tree):
        if isinstance(leaf, EventLeaf):
            seen.setdefault(leaf.counter.id, leaf.counter)
    return tuple(seen.values())
