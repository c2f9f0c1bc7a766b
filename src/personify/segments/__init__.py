"""Segments: rule segments written in a JSON condition language, compiled into predicates.

This first part holds the language only: ``conditions`` (the condition tree and its event
counters), ``operators`` (what each operator means), ``validation`` (parsing, with a JSON
pointer for every problem) and ``predicates`` (compilation and evaluation). See ``docs/segments.md``.
"""

from __future__ import annotations

from personify.segments.conditions import EventCounter, parse_window_ms
from personify.segments.predicates import EvaluationContext, Predicate, compile_condition
from personify.segments.validation import event_counters, parse_condition

__all__ = [
    "EvaluationContext",
    "EventCounter",
    "Predicate",
    "compile_condition",
    "event_counters",
    "parse_condition",
    "parse_window_ms",
]
