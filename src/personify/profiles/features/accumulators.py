"""The per-profile state of one feature: stamped values and hourly accumulators."""

from __future__ import annotations

from typing import Any

import msgspec


# gc=False: a profile state holds many of these (a worker's state cache, millions), and a
# batch makes one per field an event wins; none can be part of a reference cycle (a value
# is decoded JSON), so the garbage collector need not track them
class Stamped(msgspec.Struct, array_like=True, gc=False):
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


# gc=False as ``Stamped``: numbers, stamped values and dicts of numbers, no cycle possible
class Accumulator(msgspec.Struct, omit_defaults=True, gc=False):
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
