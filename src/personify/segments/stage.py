"""Real-time membership: the worker's batch stage that evaluates every rule segment.

``SegmentStage`` runs in the transaction that stores a batch's profiles
(``personify.profiles.batch.BatchStage``). It names the event counters the active rules read,
so the batch keeps them in the profile states as it applies; then, for every touched profile,
it evaluates each rule (a segment after the segments it reads) against the new state at the
current time, and writes the difference from the profile's open memberships: entries, exits
and their events (``personify.segments.membership``). A profile whose consent withdraws
personalization is in no segment. It also records, per profile, when its windows next lose
an event (``segment_due``), for the sweep (``personify.segments.sweep``).

``evaluate_profile_segments`` and ``reconcile`` are shared with the sweep, which re-evaluates
profiles whose windows slid without a new event from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.batch import ProfileBatch, StagedProfile
from personify.profiles.counters import CounterPlan, CounterSpec, count_at, next_expiry
from personify.profiles.document import personalization_allowed
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.state import ProfileState, evaluate_profile
from personify.segments.membership import MembershipChanges
from personify.segments.predicates import EvaluationContext
from personify.segments.repository import CompiledSegments, SegmentRepository
from personify.segments.tables import segment_due, segment_members

__all__ = ["SegmentStage", "evaluate_profile_segments", "reconcile"]

# IN lists are cut to this many values (SQLite binds at most 32,766 parameters)
_CHUNK = 500


def evaluate_profile_segments(
    state: ProfileState, compiled: CompiledSegments, features: FeatureSet, at_ms: int
) -> set[str]:
    """The keys of the rule segments ``state`` belongs to at ``at_ms``."""
    if not compiled.segments or not personalization_allowed(state, features):
        return set()
    members: set[str] = set()
    context = EvaluationContext(
        traits={k: s.value for k, s in state.traits.items() if s.value is not None},
        features=evaluate_profile(state, features, at_ms) if compiled.uses_features else {},
        event_counts=lambda counter: count_at(state, counter, at_ms),
        # filled as the rules are evaluated: a rule comes after the segments it reads
        segments=members,
    )
    for segment in compiled.segments:
        if segment.predicate.evaluate(context):
            members.add(segment.key)
    return members


def open_memberships(
    conn: sa.Connection, profile_ids: Sequence[str]
) -> dict[str, dict[str, list[int]]]:
    """The open membership rows of ``profile_ids``: profile → segment → row ids (oldest first)."""
    found: dict[str, dict[str, list[int]]] = {}
    m = segment_members.c
    for start in range(0, len(profile_ids), _CHUNK):
        chunk = list(profile_ids[start : start + _CHUNK])
        rows = conn.execute(
            sa.select(m.id, m.profile_id, m.segment_key)
            .where(m.profile_id.in_(chunk), m.exited_at.is_(None))
            .order_by(m.id)
        )
        for row_id, profile_id, key in rows:
            found.setdefault(str(profile_id), {}).setdefault(str(key), []).append(int(row_id))
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
    versions = {s.key: s.version for s in compiled.segments}
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
    for key in sorted(members - set(current)):
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

    @property
    def plan(self) -> CounterPlan:
        """The counters of the rules as last read by ``counters``."""
        return self._plan

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """The counters of every active rule (read again when a definition changed)."""
        self._current = self._repository.compiled(conn)
        if self._plan.ids != frozenset(c.id for c in self._current.counters):
            self._plan = CounterPlan(self._current.counters)
        return self._current.counters

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Evaluate, and write the membership changes, for every touched profile."""
        now = self._clock.now()
        self.evaluate(conn, profiles, now, reason="rule")

    def evaluate(
        self,
        conn: sa.Connection,
        profiles: Sequence[StagedProfile],
        now: datetime,
        *,
        reason: str,
    ) -> MembershipChanges:
        """Evaluate ``profiles`` at ``now`` and write what changed; returns the changes."""
        compiled = self._current
        changes = MembershipChanges(now)
        if not compiled.segments:
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
        due: dict[str, int | None] = {}
        for profile in profiles:
            state = profile.state
            members = evaluate_profile_segments(state, compiled, self._features, at_ms)
            reconcile(
                changes,
                profile.profile_id,
                state,
                current.get(profile.profile_id, {}),
                members,
                compiled,
                self._features,
                reason,
            )
            due[profile.profile_id] = next_expiry(state, self._plan, at_ms)
        changes.flush(conn)
        write_due(conn, due, forget=list(merged))
        return changes
