"""Real-time membership: the worker's batch stage that evaluates every rule segment.

``SegmentStage`` runs in the transaction that stores a batch's profiles
(``personify.profiles.batch.BatchStage``). It names the event counters the active rules read,
so the batch keeps them in the profile states as it applies; then it evaluates every rule (a
segment after the segments it reads) against the touched profiles' new states at the current
time, all profiles at once as columns (``personify.segments.columns``), and writes each
profile's difference from its open memberships: entries, exits and their events
(``personify.segments.membership``). A profile whose consent withdraws
personalization is in no segment. It also records, per profile, when its windows next lose
an event (``segment_due``), for the sweep (``personify.segments.sweep``). The segments each
profile is in once it is done are left in the batch (``ProfileBatch.memberships``) for the
stages after it: the recommendation stage's popularity per segment reads them there.

The sweep and the backfill evaluate a page of stored profiles the same way
(``SegmentStage.evaluate_stored``). ``evaluate_profile_segments`` is the same answer for one
profile, through each rule's compiled predicate: the reference the columns are tested
against, and what the benchmark builds its sweep state with.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.batch import ProfileBatch, StagedProfile
from personify.profiles.counters import (
    CounterPlan,
    CounterSpec,
    count_at,
    fill_counters,
    next_expiry,
)
from personify.profiles.document import personalization_allowed
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.predictions import read_predictions
from personify.profiles.state import ProfileState, decode_state, evaluate_profile, state_text
from personify.segments.clusterings import feature_vector
from personify.segments.columns import BatchChange, ColumnPlan, is_affected
from personify.segments.membership import MembershipChanges
from personify.segments.predicates import EvaluationContext
from personify.segments.repository import CompiledSegment, CompiledSegments, SegmentRepository
from personify.segments.rfm import ORDER_EVENT, RFM_CELLS, cell_of, profile_figures, rfm_key
from personify.segments.tables import segment_due, segment_members

__all__ = ["SegmentStage", "evaluate_profile_segments", "reconcile"]

# IN lists are cut to this many values (SQLite binds at most 32,766 parameters)
_CHUNK = 500
# event types that change counters and features only, unless their context carries traits
_ACTIVITY_TYPES = frozenset({"track", "page", "screen"})


def batch_changes(batch: ProfileBatch, events_after: Sequence[int]) -> list[BatchChange]:
    """What the batch changed of each of its profiles (by index; ``events_after`` is each
    one's event count once the batch applied): track, page and screen events without context
    traits or consent change their counters and features only."""
    sizes = np.bincount(batch.profile, minlength=batch.profiles).tolist()
    names: list[set[str]] = [set() for _ in range(batch.profiles)]
    everything = [False] * batch.profiles
    for p, (count, state_events) in enumerate(zip(sizes, events_after, strict=True)):
        # a profile whose every event is in this batch is new: no rule has answered for it
        everything[p] = count == state_events
    for event, p in zip(batch.events, batch.profile.tolist(), strict=True):
        names[p].add(event.name)
        if not everything[p]:
            context = event.data.get("context")
            everything[p] = event.type not in _ACTIVITY_TYPES or (
                type(context) is dict and ("traits" in context or "consent" in context)
            )
    return [BatchChange(frozenset(n), e) for n, e in zip(names, everything, strict=True)]


def evaluate_profile_segments(
    state: ProfileState,
    compiled: CompiledSegments,
    features: FeatureSet,
    at_ms: int,
    *,
    change: BatchChange | None = None,
    current: Collection[str] = (),
    document: dict[str, Any] | None = None,
    placed: Collection[str] | None = None,
    predictions: Mapping[str, Any] | None = None,
) -> set[str]:
    """The keys of the segments ``state`` belongs to at ``at_ms``.

    With ``change`` (what a batch changed), a rule that reads nothing the batch changed
    keeps its ``current`` answer: an event leaf of another event, a trait leaf when no
    trait can have changed. What time alone changes (a window sliding) is the sweep's.
    ``placed`` is the cluster segments the profile was just placed in (the worker's; without
    it, the profile keeps its ``current`` clusters); ``document`` its evaluated features,
    when the caller has them; ``predictions`` its stored predictions (``personify.profiles.
    predictions``), read when a rule reads them.
    """
    if not compiled.active or not personalization_allowed(state, features):
        return set()
    if change is not None and change.everything:
        change = None
    rfm = compiled.rfm
    # RFM cells change with orders (and with time alone: the sweep's)
    rfm_affected = rfm is not None and (change is None or ORDER_EVENT in change.names)
    affected: set[str] = {rfm_key(cell) for cell in RFM_CELLS} if rfm_affected else set()
    if placed is not None:
        affected |= compiled.cluster_keys
    todo: list[CompiledSegment] = []
    for segment in compiled.segments:
        if change is None or is_affected(segment, change, affected):
            todo.append(segment)
            affected.add(segment.key)
    members = {key for key in current if key not in affected}
    if placed is not None:
        members.update(placed)
    if not todo and not rfm_affected:
        return members
    if document is None and (rfm_affected or any(s.predicate.reads_features for s in todo)):
        document = evaluate_profile(state, features, at_ms)
    if rfm is not None and rfm_affected and document is not None:
        figures = profile_figures(state, document, at_ms)
        if figures is not None:
            r, f, _ = rfm.scores(*figures[:3])
            members.add(rfm_key(cell_of(r, f)))
    context = EvaluationContext(
        traits={k: s.value for k, s in state.traits.items() if s.value is not None},
        features=document if document is not None else {},
        event_counts=lambda counter: count_at(state, counter, at_ms),
        # filled as the rules are evaluated: a rule comes after the segments it reads
        segments=members,
        predictions=predictions,
    )
    for segment in todo:
        if segment.predicate.evaluate(context):
            members.add(segment.key)
    return members


def next_change_ms(
    state: ProfileState, compiled: CompiledSegments, plan: CounterPlan, at_ms: int
) -> int | None:
    """The first time after ``at_ms`` when time alone may change a membership: an event
    leaving a window, or a buyer's RFM recency score dropping."""
    due = next_expiry(state, plan, at_ms)
    if compiled.rfm is not None:
        last = state.last_events.get(ORDER_EVENT)
        if last is not None:
            change = compiled.rfm.next_recency_change_ms(last.ts, at_ms)
            if change is not None:
                due = change if due is None else min(due, change)
    return due


def open_memberships(
    conn: sa.Connection, profile_ids: Sequence[str]
) -> dict[str, dict[str, list[int]]]:
    """The open membership rows of ``profile_ids``: profile → segment → row ids (oldest first)."""
    found: dict[str, dict[str, list[int]]] = {}
    m = segment_members.c
    # a batch's profiles hold about as many open rows as the batch has events: read in index
    # order, not sorted by id (a profile holds a segment twice only after a merge, and then
    # its few rows are sorted below)
    statement = sa.select(m.id, m.profile_id, m.segment_key).where(
        m.profile_id.in_(sa.bindparam("b_ids", expanding=True)), m.exited_at.is_(None)
    )
    twice: list[list[int]] = []
    for start in range(0, len(profile_ids), _CHUNK):
        chunk = list(profile_ids[start : start + _CHUNK])
        for row_id, profile_id, key in conn.execute(statement, {"b_ids": chunk}):
            held = found.get(profile_id)
            if held is None:
                held = found[str(profile_id)] = {}
            rows = held.get(key)
            if rows is None:
                held[str(key)] = [int(row_id)]
            else:
                rows.append(int(row_id))
                twice.append(rows)
    for rows in twice:
        rows.sort()
    return found


def reconcile(
    changes: MembershipChanges,
    profile_id: str,
    state: ProfileState,
    current: dict[str, list[int]],
    members: set[str],
    compiled: CompiledSegments,
    features: FeatureSet,
    reason: str,
) -> None:
    """Record the entries and exits that take ``profile_id`` from ``current`` to ``members``."""
    versions = compiled.versions
    is_user = bool(state.user_ids)
    withdrawn = not personalization_allowed(state, features)
    for key, row_ids in sorted(current.items()):
        if len(row_ids) > 1:
            # two profiles that were both in the segment were merged: one stay goes on
            changes.close_quietly(row_ids[1:], "merged")
        if key in members:
            continue
        exit_reason = "consent" if withdrawn else reason if key in versions else "archived"
        changes.exit(row_ids[0], profile_id, is_user, key, versions.get(key, 0), exit_reason)
    for key in sorted(members.difference(current)):
        changes.enter(profile_id, is_user, key, versions[key], reason)


def write_due(
    conn: sa.Connection, due: dict[str, int | None], *, forget: Sequence[str] = ()
) -> None:
    """Store when each profile's windows next change (``None``: never without new events)."""
    stale = [*due, *forget]
    for start in range(0, len(stale), _CHUNK):
        conn.execute(
            segment_due.delete().where(segment_due.c.profile_id.in_(stale[start : start + _CHUNK]))
        )
    rows = [{"profile_id": p, "due_ms": ms} for p, ms in due.items() if ms is not None]
    if rows:
        conn.execute(segment_due.insert(), rows)


class SegmentStage:
    """Evaluates the rule segments of every profile a batch touches (module docstring)."""

    name = "segments"

    def __init__(
        self, repository: SegmentRepository, features: FeatureSet, *, clock: Clock | None = None
    ) -> None:
        self._repository = repository
        self._features = features
        self._clock = clock or SystemClock()
        self._current = CompiledSegments()
        self._plan = CounterPlan()
        self._column_plan = ColumnPlan(self._current)

    @property
    def plan(self) -> CounterPlan:
        """The counters of the rules as last read by ``counters``."""
        return self._plan

    def _columns(self, compiled: CompiledSegments) -> ColumnPlan:
        """The rules compiled for columns, again only when the definitions changed."""
        if self._column_plan.compiled is not compiled:
            self._column_plan = ColumnPlan(compiled)
        return self._column_plan

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """The counters of every active rule (read again when a definition changed)."""
        self._current = self._repository.compiled(conn)
        if self._plan.ids != frozenset(c.id for c in self._current.counters):
            self._plan = CounterPlan(self._current.counters)
        return self._current.counters

    def evaluate_stored(
        self, conn: sa.Connection, rows: Sequence[Any], now: datetime, *, reason: str
    ) -> MembershipChanges:
        """Evaluate stored profiles (``(profile_id, version, state)`` rows, read with their
        locks) at ``now``, for the sweep and the backfill; returns the changes.

        The rules are read again first, and a rule saved since a profile was written counts
        its past events from the timeline (``fill_counters``)."""
        staged = [
            StagedProfile(i, str(pid), int(version), decode_state(state_text(blob)), ())
            for i, (pid, version, blob) in enumerate(rows)
        ]
        self.counters(conn)
        fill_counters(conn, {p.profile_id: p.state for p in staged}, self._plan)
        return self.evaluate(conn, staged, now, reason=reason)

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Evaluate, and write the membership changes, for every touched profile."""
        now = self._clock.now()
        events_after = [0] * batch.profiles
        for profile in profiles:
            events_after[profile.index] = profile.state.events
        changes = batch_changes(batch, events_after)
        members = self.evaluate(
            conn, profiles, now, reason="rule", changes_by_index=changes, place=True
        ).members
        if members is not None:
            # the stays the batch leaves open: the recommendation stage's popularity per
            # segment reads them here instead of from the table again
            held: list[Collection[str]] = [()] * batch.profiles
            for profile, member_of in zip(profiles, members, strict=True):
                held[profile.index] = member_of
            batch.memberships = held

    def evaluate(
        self,
        conn: sa.Connection,
        profiles: Sequence[StagedProfile],
        now: datetime,
        *,
        reason: str,
        changes_by_index: Sequence[BatchChange] | None = None,
        place: bool = False,
    ) -> MembershipChanges:
        """Evaluate ``profiles`` at ``now`` and write what changed; returns the changes, with
        the segments each profile is in once they are written (``members``).

        With ``changes_by_index`` (``batch_changes`` of the batch that touched them), only
        the rules that read what changed are evaluated again. With ``place``, each profile is
        placed in the nearest cluster of every clustering (``personify.segments.clusterings``),
        all profiles at once per clustering."""
        compiled = self._current
        changes = MembershipChanges(now)
        if not compiled.active:
            # archiving a segment closes its stays, so none is open without an active rule
            return changes
        at_ms = datetime_ms(now)
        merged = {gone: p.profile_id for p in profiles for gone in p.merged_from}
        if merged:
            # the stays of merged profiles go on in the profile they were merged into
            m = segment_members.c
            conn.execute(
                segment_members.update()
                .where(m.profile_id == sa.bindparam("b_from"), m.exited_at.is_(None))
                .values(profile_id=sa.bindparam("b_into")),
                [{"b_from": gone, "b_into": into} for gone, into in merged.items()],
            )
        current = open_memberships(conn, [p.profile_id for p in profiles])
        documents: list[dict[str, Any] | None] = [None] * len(profiles)
        placed: list[set[str] | None] = [None] * len(profiles)
        if place and compiled.clusterings and profiles:
            evaluated = [evaluate_profile(p.state, self._features, at_ms) for p in profiles]
            keys: list[set[str]] = [set() for _ in profiles]
            for live in compiled.clusterings:
                vectors = [feature_vector(d, live.paths) for d in evaluated]
                for into, key in zip(keys, live.place(vectors), strict=True):
                    into.add(key)
            documents, placed = list(evaluated), list(keys)
        predictions: dict[str, dict[str, Any]] = {}
        if any(s.predicate.reads_predictions for s in compiled.segments):
            # the prediction stage ran first in this transaction: these are the new scores
            predictions = read_predictions(conn, [p.profile_id for p in profiles])
        members = self._columns(compiled).evaluate(
            [p.state for p in profiles],
            self._features,
            at_ms,
            changes=[
                changes_by_index[p.index]
                if changes_by_index is not None and not p.merged_from
                else None
                for p in profiles
            ],
            current=[current.get(p.profile_id, {}) for p in profiles],
            documents=documents,
            placed=placed,
            predictions=[predictions.get(p.profile_id) for p in profiles],
        )
        due: dict[str, int | None] = {}
        for profile, member_of in zip(profiles, members, strict=True):
            state = profile.state
            reconcile(
                changes,
                profile.profile_id,
                state,
                current.get(profile.profile_id, {}),
                member_of,
                compiled,
                self._features,
                reason,
            )
            due[profile.profile_id] = next_change_ms(state, compiled, self._plan, at_ms)
        changes.flush(conn)
        write_due(conn, due, forget=list(merged))
        # ``reconcile`` took each profile from its open stays to exactly ``members``
        changes.members = members
        return changes
