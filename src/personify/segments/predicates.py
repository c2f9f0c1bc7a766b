"""A condition compiled once into a predicate, and the context a predicate is evaluated in."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from personify.segments.conditions import (
    AllOf,
    AnyOf,
    Condition,
    EventCounter,
    EventLeaf,
    Not,
    SegmentLeaf,
    ValueLeaf,
    resolve_path,
)
from personify.segments.operators import build_test
from personify.segments.validation import event_counters, parse_condition

__all__ = ["EvaluationContext", "Predicate", "compile_condition"]

EventCounts = Mapping[str, int] | Callable[[EventCounter], int]


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """What a predicate reads about one profile at one time.

    * ``traits``: the profile's traits; ``features``: the ``features`` section of the profile
      document (``GET /v1/profiles/{id}``) evaluated at that time;
    * ``event_counts``: the number of events each counter holds at that time, as a mapping
      from ``EventCounter.id`` (a counter it lacks counts 0) or a callable taking the counter;
    * ``segments``: the keys of the segments the profile is in;
    * ``predictions``: the profile's predictions (``None`` when there are none: every
      prediction leaf is then false).
    """

    traits: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    event_counts: EventCounts = field(default_factory=dict)
    segments: Collection[str] = frozenset()
    predictions: Mapping[str, Any] | None = None


Evaluate = Callable[[EvaluationContext], bool]


def _count(context: EvaluationContext, counter: EventCounter) -> int:
    counts = context.event_counts
    if isinstance(counts, Mapping):
        return int(counts.get(counter.id, 0))
    return int(counts(counter))


def _compile_value(leaf: ValueLeaf) -> Evaluate:
    parts = tuple(leaf.path.split("."))
    test = build_test(leaf.comparison.op, leaf.comparison.value)
    if leaf.source == "trait":
        return lambda ctx: test(resolve_path(ctx.traits, parts))
    if leaf.source == "feature":
        return lambda ctx: test(resolve_path(ctx.features, parts))

    # no predictions at all reads as a missing value, which no operator matches
    return lambda ctx: ctx.predictions is not None and test(resolve_path(ctx.predictions, parts))


def _compile(node: Condition) -> Evaluate:
    if isinstance(node, ValueLeaf):
        return _compile_value(node)
    if isinstance(node, EventLeaf):
        counter = node.counter
        test = build_test(node.count.op, node.count.value)
        return lambda ctx: test(_count(ctx, counter))
    if isinstance(node, SegmentLeaf):
        key = node.key
        return lambda ctx: key in ctx.segments
    if isinstance(node, Not):
        child = _compile(node.child)
        return lambda ctx: not child(ctx)
    children = tuple(_compile(c) for c in node.children)
    if isinstance(node, AllOf):
        return lambda ctx: all(c(ctx) for c in children)
    if isinstance(node, AnyOf):
        return lambda ctx: any(c(ctx) for c in children)
    raise TypeError(f"not a condition: {node!r}")


def _reads(node: Condition, source: str) -> bool:
    if isinstance(node, ValueLeaf):
        return node.source == source
    if isinstance(node, Not):
        return _reads(node.child, source)
    if isinstance(node, AllOf | AnyOf):
        return any(_reads(c, source) for c in node.children)
    return False


def _segment_keys(node: Condition) -> frozenset[str]:
    if isinstance(node, SegmentLeaf):
        return frozenset((node.key,))
    if isinstance(node, Not):
        return _segment_keys(node.child)
    if isinstance(node, AllOf | AnyOf):
        return frozenset().union(*(_segment_keys(c) for c in node.children))
    return frozenset()


class Predicate:
    """A compiled condition: ``evaluate(context)`` is true when the profile belongs.

    What it reads, so that a caller evaluates only what an event can change: ``counters``
    (the event counters, see ``event_counters``) and ``event_names`` (their event names,
    ``*`` for any), ``segment_keys`` (the segments whose membership it reads: evaluate those
    first), ``reads_features``, ``reads_traits`` and ``reads_predictions``.
    """

    __slots__ = (
        "_evaluate",
        "condition",
        "counters",
        "event_names",
        "reads_features",
        "reads_predictions",
        "reads_traits",
        "segment_keys",
    )

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self.counters = event_counters(condition)
        self.event_names = frozenset(c.event for c in self.counters)
        self.segment_keys = _segment_keys(condition)
        self.reads_features = _reads(condition, "feature")
        self.reads_traits = _reads(condition, "trait")
        self.reads_predictions = _reads(condition, "prediction")
        self._evaluate = _compile(condition)

    def evaluate(self, context: EvaluationContext) -> bool:
        """Whether the profile described by ``context`` matches. Never raises on data."""
        return self._evaluate(context)


def compile_condition(
    condition: Any,
    *,
    key: str | None = None,
    segments: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Predicate:
    """Validate (as ``parse_condition``, raising ``InvalidDefinition``) and compile a condition."""
    return Predicate(parse_condition(condition, key=key, segments=segments))
