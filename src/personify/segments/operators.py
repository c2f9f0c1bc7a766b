"""The comparison operators of the condition language: what each accepts, and what it means.

A value is of one *kind*: ``number`` (an integer or a float, never a boolean), ``string``,
``boolean``, ``list``, ``object`` or ``null``. Comparisons are between values of one kind;
anything else (a missing value, a null, a number against a string) is simply false, never an
error. ``exists`` is the only operator that is true of a value of any kind.

| op | operand | true when the actual value ``a`` … |
|---|---|---|
| ``eq`` / ``ne`` | a string, number or boolean ``v`` | is of ``v``'s kind and equals / differs from it |
| ``lt`` ``lte`` ``gt`` ``gte`` | a string or number ``v`` | is of ``v``'s kind and compares so (strings by code point) |
| ``between`` | ``[low, high]``, both strings or both numbers, ``low <= high`` | is of their kind and ``low <= a <= high`` |
| ``in`` / ``not_in`` | a non-empty list of strings, or of numbers, or of booleans | is of the list's kind and is / is not in it |
| ``contains`` | a string, number or boolean ``v`` | is a string holding the string ``v``, or a list with an element ``eq`` to ``v`` |
| ``exists`` | none | is present and not null |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "COUNT_OPERATORS",
    "MISSING",
    "OPERATORS",
    "Factorized",
    "build_test",
    "canonical_operand",
    "check_operand",
    "evaluate_column",
    "factorize",
    "kind_of",
]

OPERATORS: Final = (
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "not_in",
    "contains",
    "exists",
    "between",
)
# an event leaf's count is a whole number: no substring or presence test applies to it
COUNT_OPERATORS: Final = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between")

MAX_LIST_ITEMS: Final = 1000
# integral floats this small are written as integers in the canonical form (2.0 -> 2)
_EXACT_INTEGER: Final = 2**53

_SCALAR_KINDS: Final = ("string", "number", "boolean")
_ORDERED_KINDS: Final = ("string", "number")


class _Missing:
    """The value of a path that leads nowhere."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

Test = Callable[[Any], bool]


def kind_of(value: Any) -> str:
    """The kind of a JSON value: number, string, boolean, list, object, null (or missing)."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return "other"


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_problem(value: Any, kinds: tuple[str, ...], *, counts: bool) -> str | None:
    kind = kind_of(value)
    if counts:
        if kind != "number" or isinstance(value, float) or value < 0:
            return f"a count is a whole number of 0 or more, not {value!r}"
        return None
    if kind not in kinds:
        return f"expected {' or '.join(kinds)}, got {kind}"
    if kind == "number" and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return None


def check_operand(op: str, value: Any, *, counts: bool = False) -> str | None:
    """Why ``value`` is not a valid operand of ``op`` (``None`` when it is).

    ``op`` must be one of ``OPERATORS`` and not ``exists`` (which takes no operand). With
    ``counts`` the operand is compared with an event count: whole numbers of 0 or more only.
    """
    if op in ("eq", "ne", "contains"):
        return _scalar_problem(value, _SCALAR_KINDS, counts=counts)
    if op in ("lt", "lte", "gt", "gte"):
        return _scalar_problem(value, _ORDERED_KINDS, counts=counts)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            return "between takes a list of two values, [low, high]"
        for bound in value:
            problem = _scalar_problem(bound, _ORDERED_KINDS, counts=counts)
            if problem:
                return problem
        if kind_of(value[0]) != kind_of(value[1]):
            return "the two bounds of between must be of one kind"
        if value[0] > value[1]:
            return "between needs low <= high"
        return None
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            return f"{op} takes a non-empty list"
        if len(value) > MAX_LIST_ITEMS:
            return f"{op} takes at most {MAX_LIST_ITEMS} values"
        for item in value:
            problem = _scalar_problem(item, _SCALAR_KINDS, counts=counts)
            if problem:
                return problem
        if len({kind_of(item) for item in value}) > 1:
            return f"the values of {op} must all be of one kind"
        return None
    raise ValueError(f"no operand for {op!r}")


def _canonical_scalar(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INTEGER:
        return int(value)
    return value


def canonical_operand(op: str, value: Any) -> Any:
    """The operand in its canonical form: integral floats as integers, ``in`` lists sorted
    and without repeats (lists become tuples, so a comparison hashes), so that equal
    conditions have equal JSON."""
    if op in ("in", "not_in"):
        return tuple(sorted({_canonical_scalar(item) for item in value}))
    if op == "between":
        return (_canonical_scalar(value[0]), _canonical_scalar(value[1]))
    return _canonical_scalar(value)


def _same_kind_test(kind: str) -> Callable[[Any], bool]:
    if kind == "number":
        return _is_number
    if kind == "boolean":
        return lambda a: isinstance(a, bool)
    return lambda a: isinstance(a, str)


def _exists(actual: Any) -> bool:
    return actual is not None and actual is not MISSING


def build_test(op: str, value: Any = None) -> Test:
    """A one-argument test of the actual value, for a valid (op, canonical operand) pair."""
    if op == "exists":
        return _exists
    if op == "contains":
        return _contains_test(value)
    probe = value[0] if op in ("between", "in", "not_in") else value
    same = _same_kind_test(kind_of(probe))
    if op == "eq":
        return lambda a: same(a) and a == value
    if op == "ne":
        return lambda a: same(a) and a != value
    if op == "lt":
        return lambda a: same(a) and a < value
    if op == "lte":
        return lambda a: same(a) and a <= value
    if op == "gt":
        return lambda a: same(a) and a > value
    if op == "gte":
        return lambda a: same(a) and a >= value
    if op == "between":
        low, high = value
        return lambda a: same(a) and low <= a <= high
    members = frozenset(value)
    if op == "in":
        return lambda a: same(a) and a in members
    if op == "not_in":
        return lambda a: same(a) and a not in members
    raise ValueError(f"unknown operator {op!r}")


def _contains_test(value: Any) -> Test:
    same = _same_kind_test(kind_of(value))
    text = value if isinstance(value, str) else None

    def test(actual: Any) -> bool:
        if isinstance(actual, str):
            return text is not None and text in actual
        if isinstance(actual, list | tuple):
            return any(same(item) and item == value for item in actual)
        return False

    return test


# the value types whose equal values test alike: a column tests each distinct one once
_HASHABLE: Final = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class Factorized:
    """A column of values as ``codes`` into its ``distinct`` values (an unhashable value,
    a list or an object, is a distinct value of its own)."""

    codes: npt.NDArray[np.int64]
    distinct: list[Any]


def factorize(values: Sequence[Any]) -> Factorized:
    """``values`` as codes into their distinct values, for ``evaluate_column``."""
    index: dict[tuple[type, Any], int] = {}
    distinct: list[Any] = []
    codes = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        kind = type(value)
        if kind in _HASHABLE or value is MISSING:
            # keyed with the type: 1, 1.0 and True are one key of a dict, but not one value
            # to the operators (a boolean is no number)
            key = (kind, value)
            code = index.get(key)
            if code is None:
                code = index[key] = len(distinct)
                distinct.append(value)
        else:
            code = len(distinct)
            distinct.append(value)
        codes[i] = code
    return Factorized(codes, distinct)


def evaluate_column(column: Factorized, test: Test) -> npt.NDArray[np.bool_]:
    """``test`` of every value of a factorized column, made once per distinct value."""
    table = np.fromiter((bool(test(v)) for v in column.distinct), np.bool_, len(column.distinct))
    return table[column.codes]
