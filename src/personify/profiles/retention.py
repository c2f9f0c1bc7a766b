"""Keeping the state database the size of its profiles: pruning the timeline, compacting history.

``ProfilePruner.prune`` does two things, each in bounded transactions so that a large prune
never holds one long write lock that stalls the stream worker (on SQLite the whole file):

* **Timeline and dedupe keys.** ``applied_events`` rows applied more than
  ``profile_timeline_retention_days`` ago are deleted, a chunk of rows per transaction.
  Those rows are both the timeline and the exactly-once guard, so a resend of a pruned event
  is applied again (docs/profiles.md, "Retention"); older timeline is read from the lake.
* **History.** Per profile, the versions changed more than ``profile_history_retention_days``
  ago are folded into the newest of them, which then holds a full snapshot (the replay of
  snapshot and diffs that ``ProfileRepository.state_as_of`` does), and the older rows are
  deleted. ``as_of`` any time after the cutoff answers exactly as before; a profile's
  newest version is never removed.

Running it twice, or beside a worker, is safe: the worker only adds rows newer than both
cutoffs, and a profile whose old versions were folded already has nothing left to fold.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.events import MS_PER_DAY, datetime_ms, format_ms
from personify.profiles.repository import replay_document
from personify.profiles.state import compress_state
from personify.profiles.tables import applied_events, profile_versions, profiles
from personify.store.database import Database, lost_a_race

if TYPE_CHECKING:
    from personify.settings import Settings

_T = TypeVar("_T")
_encode = msgspec.json.encode
# a transaction that PostgreSQL aborted for a concurrent one (the worker) is run again
_RACE_ATTEMPTS = 5
_EMPTY_DIFF = '{"set":[],"unset":[]}'


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one prune removed, and the cutoffs it used."""

    events_deleted: int
    versions_deleted: int
    profiles_compacted: int
    profiles_at_rest: int
    timeline_cutoff_ms: int
    history_cutoff: datetime
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``personify profiles prune`` prints."""
        return {
            "eventsDeleted": self.events_deleted,
            "versionsDeleted": self.versions_deleted,
            "profilesCompacted": self.profiles_compacted,
            "profilesAtRest": self.profiles_at_rest,
            "timelineCutoff": format_ms(self.timeline_cutoff_ms),
            "historyCutoff": self.history_cutoff.isoformat(),
            "elapsedSeconds": round(self.elapsed_s, 3),
        }


class ProfilePruner:
    """Deletes timeline rows and folds versions older than their retention (module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        timeline_retention_days: float,
        history_retention_days: float,
        clock: Clock | None = None,
        chunk_rows: int = 5000,
        chunk_profiles: int = 200,
    ) -> None:
        self._db = db
        self._timeline_retention_ms = round(timeline_retention_days * MS_PER_DAY)
        self._history_retention = timedelta(days=history_retention_days)
        self._clock = clock or SystemClock()
        self._chunk_rows = max(1, chunk_rows)
        self._chunk_profiles = max(1, chunk_profiles)

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, *, clock: Clock | None = None
    ) -> ProfilePruner:
        """A pruner with the retentions the settings name."""
        return cls(
            db,
            timeline_retention_days=settings.profile_timeline_retention_days,
            history_retention_days=settings.profile_history_retention_days,
            clock=clock,
        )

    def prune(self) -> PruneResult:
        """Prune the timeline, then compact the history, against the clock's current time."""
        started = time.monotonic()
        now = self._clock.now()
        timeline_cutoff_ms = datetime_ms(now) - self._timeline_retention_ms
        history_cutoff = now - self._history_retention
        events = self.prune_timeline(timeline_cutoff_ms)
        versions, profiles = self.compact_history(history_cutoff)
        at_rest = self.rest_profiles(history_cutoff)
        return PruneResult(
            events_deleted=events,
            versions_deleted=versions,
            profiles_compacted=profiles,
            profiles_at_rest=at_rest,
            timeline_cutoff_ms=timeline_cutoff_ms,
            history_cutoff=history_cutoff,
            elapsed_s=time.monotonic() - started,
        )

    def prune_timeline(self, cutoff_ms: int) -> int:
        """Delete the ``applied_events`` rows applied before ``cutoff_ms``; how many went."""
        oldest = (
            sa.select(applied_events.c.event_key)
            .where(applied_events.c.applied_at_ms < cutoff_ms)
            .limit(self._chunk_rows)
        )
        # the IN (subquery with LIMIT) form bounds each transaction on SQLite and PostgreSQL
        # alike (neither has a portable DELETE … LIMIT)
        statement = sa.delete(applied_events).where(
            applied_events.c.event_key.in_(oldest.scalar_subquery())
        )
        total = 0
        while True:
            deleted = self._in_transaction(lambda conn: conn.execute(statement).rowcount)
            total += deleted
            if deleted < self._chunk_rows:
                return total

    def compact_history(self, cutoff: datetime) -> tuple[int, int]:
        """Fold each profile's versions changed before ``cutoff`` into the newest of them;
        returns (versions deleted, profiles compacted)."""
        deleted = compacted = 0
        after = ""
        while True:
            page = self._profiles_to_compact(cutoff, after)
            if not page:
                return deleted, compacted
            deleted += self._in_transaction(functools.partial(self._fold, page=page))
            compacted += len(page)
            after = page[-1][0]

    def _profiles_to_compact(self, cutoff: datetime, after: str) -> list[tuple[str, int]]:
        """The next profiles (by id, after ``after``) with more than one version before
        ``cutoff``, each with the newest such version."""
        query = (
            sa.select(profile_versions.c.profile_id, sa.func.max(profile_versions.c.version))
            .where(profile_versions.c.changed_at < cutoff, profile_versions.c.profile_id > after)
            .group_by(profile_versions.c.profile_id)
            .having(sa.func.count() > 1)
            .order_by(profile_versions.c.profile_id)
            .limit(self._chunk_profiles)
        )
        with self._db.connect() as conn:
            return [(str(pid), int(version)) for pid, version in conn.execute(query)]

    def _fold(self, conn: sa.Connection, *, page: list[tuple[str, int]]) -> int:
        deleted = 0
        for profile_id, newest in page:
            document = replay_document(conn, profile_id, through_version=newest)
            if document is None:
                # no snapshot to start from (not a state the worker writes): leave it whole
                continue
            conn.execute(
                profile_versions.update()
                .where(
                    profile_versions.c.profile_id == profile_id,
                    profile_versions.c.version == newest,
                )
                # its diff was from a version that no longer exists: no replay reads it
                .values(snapshot=_encode(document).decode(), diff=_EMPTY_DIFF)
            )
            deleted += conn.execute(
                profile_versions.delete().where(
                    profile_versions.c.profile_id == profile_id,
                    profile_versions.c.version < newest,
                )
            ).rowcount
        return deleted

    def rest_profiles(self, cutoff: datetime) -> int:
        """Put the profiles not written since ``cutoff`` at rest; returns how many.

        A profile at rest keeps its state once: compressed in its row (``compress_state``),
        with ``history_in_row`` set, while its only version row (every older one was folded
        into it) keeps no snapshot and no diff. Replays read that version's state from the
        row, and the worker puts it back into the version row before it writes the next one
        (``ProfileProcessor``), so nothing of the history is lost.
        """
        rested = 0
        after = ""
        query = (
            sa.select(profiles.c.profile_id, profiles.c.version, profiles.c.state)
            .where(
                profiles.c.updated_at < cutoff,
                profiles.c.history_in_row.is_(False),
                profiles.c.profile_id > sa.bindparam("after"),
            )
            .order_by(profiles.c.profile_id)
            .limit(self._chunk_profiles)
        )
        while True:
            with self._db.connect() as conn:
                page = [
                    (str(pid), int(version), state)
                    for pid, version, state in conn.execute(query, {"after": after})
                ]
            if not page:
                return rested
            rested += self._in_transaction(functools.partial(self._rest, page=page))
            after = page[-1][0]

    def _rest(self, conn: sa.Connection, *, page: list[tuple[str, int, bytes | str]]) -> int:
        rested = 0
        versions = profile_versions.c
        # every version row of the page's profiles, in one query
        stored: dict[str, list[int]] = {}
        for profile_id, version in conn.execute(
            sa.select(versions.profile_id, versions.version).where(
                versions.profile_id.in_([profile_id for profile_id, _, _ in page])
            )
        ):
            stored.setdefault(str(profile_id), []).append(int(version))
        for profile_id, version, state in page:
            if sorted(v for v in stored.get(profile_id, ()) if v <= version) != [version]:
                continue  # versions the fold left whole (no snapshot to start from)
            # the version check: a worker that wrote meanwhile keeps its newer row
            moved = conn.execute(
                profiles.update()
                .where(
                    profiles.c.profile_id == profile_id,
                    profiles.c.version == version,
                    profiles.c.history_in_row.is_(False),
                )
                .values(
                    state=compress_state(state, binary=conn.dialect.name == "sqlite"),
                    history_in_row=True,
                )
            ).rowcount
            if not moved:
                continue
            conn.execute(
                profile_versions.update()
                .where(versions.profile_id == profile_id, versions.version == version)
                # the batch's messageIds go too: their timeline rows were pruned before
                .values(snapshot=None, diff=_EMPTY_DIFF, message_ids="[]")
            )
            rested += 1
        return rested

    def _in_transaction(self, work: Callable[[sa.Connection], _T]) -> _T:
        attempts = 0
        while True:
            try:
                with self._db.begin() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                attempts += 1
                if not lost_a_race(exc) or attempts >= _RACE_ATTEMPTS:
                    raise
