"""Event counters kept in profile states, for the stages that need them (rule segments).

A stage names the counters it reads (``CounterSpec``: an event name, a test on the event's
properties and a window); the worker keeps each one per profile as the batch applies, so
evaluating a rule never scans a user's history:

* a counter with a window keeps the times of its events that can still be inside the window:
  those later than the profile's ``last_seen`` minus the window. Any time at or after the
  profile's newest event, its count is the number of those times inside the window;
* an all-time counter keeps a number.

The result is the same for the same events in any order, late ones included: an event that
arrives after its window has passed the profile's newest event is not kept, exactly as it
would have been dropped had it arrived in order. A counter no stage names any more is dropped
from the states the worker writes. A windowed counter keeps at most ``MAX_COUNTED`` times
(the newest); a count above that reads as ``MAX_COUNTED``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from personify.profiles.tables import applied_events

if TYPE_CHECKING:
    from personify.profiles.batch import ProfileBatch
    from personify.profiles.state import ProfileState

__all__ = [
    "MAX_COUNTED",
    "CounterPlan",
    "CounterSpec",
    "PropertyColumn",
    "apply_counters",
    "count_at",
    "fill_counters",
    "next_expiry",
    "trim_counters",
]

MAX_COUNTED = 10_000
# profiles whose timelines are read in one query when counters are filled
_FILL_CHUNK = 500
_decoder = msgspec.json.Decoder()


@dataclass(slots=True)
class PropertyColumn:
    """The properties of a batch's events of one name, as a column (``None`` where an event
    has none), and what the counters have read of them so far, for the counters after them
    (``CounterSpec.match_column`` keys it as it likes)."""

    properties: list[Mapping[str, Any] | None]
    memo: dict[Any, Any] = field(default_factory=dict)


class CounterSpec(Protocol):
    """What one counter counts: ``event`` (``*`` for any), a properties test and a window."""

    @property
    def id(self) -> str:
        """A stable id: equal specs have equal ids."""
        ...

    @property
    def event(self) -> str:
        """The event name it counts, ``*`` for every event."""
        ...

    @property
    def within_ms(self) -> int | None:
        """The window; ``None`` counts all time."""
        ...

    @property
    def match_id(self) -> str:
        """Equal for specs that count the same events (they differ only in their window)."""
        ...

    def matches(self, name: str, properties: Mapping[str, Any] | None) -> bool:
        """Whether an event of this name and properties counts."""
        ...

    def match_column(self, name: str, column: PropertyColumn) -> npt.NDArray[np.bool_]:
        """Which events of ``column``, all named ``name``, count (``matches`` of each)."""
        ...


class CounterPlan:
    """A set of counter specs, indexed by event name for the worker's pass over a batch."""

    def __init__(self, specs: Sequence[CounterSpec] = ()) -> None:
        unique = {spec.id: spec for spec in specs}
        self.specs = tuple(unique.values())
        self.ids = frozenset(unique)
        self.within_ms = {spec.id: spec.within_ms for spec in self.specs}
        # specs that count the same events share one test per event (``match_id``)
        groups: dict[str, list[CounterSpec]] = {}
        for spec in self.specs:
            groups.setdefault(spec.match_id, []).append(spec)
        self._by_name: dict[str, tuple[tuple[CounterSpec, ...], ...]] = {}
        self._any: tuple[tuple[CounterSpec, ...], ...] = ()
        for group in groups.values():
            event = group[0].event
            if event == "*":
                self._any = (*self._any, tuple(group))
            else:
                self._by_name[event] = (*self._by_name.get(event, ()), tuple(group))

    def for_name(self, name: str) -> tuple[tuple[CounterSpec, ...], ...]:
        """The specs an event of this name may count in, in groups that count the same events
        (test the first of a group: the others agree)."""
        named = self._by_name.get(name, ())
        return named + self._any if self._any else named


def apply_counters(states: Sequence[ProfileState], batch: ProfileBatch, plan: CounterPlan) -> None:
    """Count the batch's events into their profiles' counters, then trim every touched state
    to what can still count (after ``apply_batch`` has set each state's ``last_seen``).

    A pass per event name of the batch, not per event: the events of one name are a column
    of properties, each counter's filters are tested over it (``CounterSpec.match_column``:
    a property read once per column, a filter tested once per distinct value), and the
    matched events' times go to their profiles."""
    if plan.specs and batch.size:
        profile = batch.profile
        ts = batch.ts
        # by name, then by profile: a profile's events of a name are counted one after the
        # other, so its state is at hand (the order of the times is trim's to fix)
        order = np.lexsort((batch.profile, batch.name_code))
        codes = batch.name_code[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(order)]
        events = batch.events
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            name = batch.names[int(codes[start])]
            groups = plan.for_name(name)
            if not groups:
                continue
            rows = order[start:end]
            column = PropertyColumn([_properties(events[row]) for row in rows.tolist()])
            for group in groups:
                matched = rows[group[0].match_column(name, column)]
                if len(matched):
                    _count_rows(states, group, profile[matched].tolist(), ts[matched].tolist())
    for p in set(batch.profile.tolist()):
        state = states[p]
        if state.counters or state.counter_totals or state.counted:
            trim_counters(state, plan)


def _properties(event: Any) -> Mapping[str, Any] | None:
    properties = event.data.get("properties")
    return properties if type(properties) is dict else None


def _count_rows(
    states: Sequence[ProfileState],
    group: tuple[CounterSpec, ...],
    profiles: list[int],
    times: list[int],
) -> None:
    """Count events (by profile index and time) into every counter of ``group``."""
    windowed = [spec.id for spec in group if spec.within_ms is not None]
    totals = [spec.id for spec in group if spec.within_ms is None]
    # event by event, every counter of the group: one state at a time
    for p, ts in zip(profiles, times, strict=True):
        state = states[p]
        if windowed:
            counters = state.counters
            for counter_id in windowed:
                kept = counters.get(counter_id)
                if kept is None:
                    counters[counter_id] = [ts]
                else:
                    kept.append(ts)
        if totals:
            held = state.counter_totals
            for counter_id in totals:
                held[counter_id] = held.get(counter_id, 0) + 1


def fill_counters(
    conn: sa.Connection, states: Mapping[str, ProfileState], plan: CounterPlan
) -> int:
    """Count, from each stored profile's timeline, the counters of ``plan`` it does not hold
    yet (a rule saved since it was last written); returns how many profiles needed it.

    ``states`` are stored profiles by id, before the batch in hand applies. A state marks
    the counters it holds completely (``counted``), so each profile is counted from its
    timeline once per new counter. The timeline holds the events of the last
    ``profile_timeline_retention_days``: a window longer than that, or an all-time counter,
    counts what it holds.
    """
    need = {pid: plan.ids - s.counted for pid, s in states.items() if plan.ids - s.counted}
    if not need:
        return 0
    missing = {counter_id for ids in need.values() for counter_id in ids}
    windows = [plan.within_ms[c] for c in missing]
    floor: int | None = None
    if None not in windows:
        newest = [states[pid].last_seen for pid in need]
        if None not in newest:
            floor = min(n for n in newest if n is not None) - max(w for w in windows if w)
    e = applied_events.c
    profile_ids = sorted(need)
    for start in range(0, len(profile_ids), _FILL_CHUNK):
        query = sa.select(e.profile_id, e.event_time_ms, e.name, e.payload).where(
            e.profile_id.in_(profile_ids[start : start + _FILL_CHUNK])
        )
        if floor is not None:
            query = query.where(e.event_time_ms > floor)
        for profile_id, ts, name, payload in conn.execute(query):
            wanted = need[str(profile_id)]
            specs = [
                spec for group in plan.for_name(str(name)) for spec in group if spec.id in wanted
            ]
            if not specs:
                continue
            properties = _decode_event(payload).get("properties")
            if type(properties) is not dict:
                properties = None
            state = states[str(profile_id)]
            for spec in specs:
                if spec.matches(str(name), properties):
                    _count(state, spec, int(ts))
    for profile_id, ids in need.items():
        state = states[profile_id]
        state.counted |= ids
        trim_counters(state, plan)
    return len(need)


def _count(state: ProfileState, spec: CounterSpec, ts: int) -> None:
    if spec.within_ms is None:
        state.counter_totals[spec.id] = state.counter_totals.get(spec.id, 0) + 1
    else:
        state.counters.setdefault(spec.id, []).append(ts)


def _decode_event(payload: str) -> dict[str, Any]:
    try:
        event = _decoder.decode(payload)
    except msgspec.DecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def trim_counters(state: ProfileState, plan: CounterPlan) -> None:
    """Drop the counters ``plan`` lacks and the times that can no longer count; sort the rest."""
    state.counted &= plan.ids
    for counter_id in [c for c in state.counter_totals if c not in plan.ids]:
        del state.counter_totals[counter_id]
    newest = state.last_seen
    for counter_id, times in list(state.counters.items()):
        within = plan.within_ms.get(counter_id)
        if within is None or newest is None:
            del state.counters[counter_id]
            continue
        times.sort()
        floor = newest - within
        if times and times[0] > floor and len(times) <= MAX_COUNTED:
            # the common case: every time still counts
            continue
        start = bisect.bisect_right(times, floor)
        start = max(start, len(times) - MAX_COUNTED)
        if start >= len(times):
            del state.counters[counter_id]
        elif start:
            state.counters[counter_id] = times[start:]


def count_at(state: ProfileState, spec: CounterSpec, at_ms: int) -> int:
    """How many of the profile's events ``spec`` counts at ``at_ms`` (window ``(at - w, at]``)."""
    if spec.within_ms is None:
        return state.counter_totals.get(spec.id, 0)
    times = state.counters.get(spec.id)
    if not times:
        return 0
    return bisect.bisect_right(times, at_ms) - bisect.bisect_right(times, at_ms - spec.within_ms)


def next_expiry(state: ProfileState, plan: CounterPlan, after_ms: int) -> int | None:
    """The first time after ``after_ms`` when an event leaves one of the profile's windows
    (its time plus the window): no count changes before then without a new event."""
    due: int | None = None
    for counter_id, times in state.counters.items():
        within = plan.within_ms.get(counter_id)
        if within is None or not times:
            continue
        # the oldest time still inside the window at after_ms leaves it first
        index = bisect.bisect_right(times, after_ms - within)
        if index < len(times):
            leaves = times[index] + within
            due = leaves if due is None else min(due, leaves)
    return due
