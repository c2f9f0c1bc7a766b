"""Reading profiles: by any id, their versions, their timeline, and as of a past time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa

from personify.profiles.events import format_ms
from personify.profiles.features import FeatureSet
from personify.profiles.history import apply_diff, changed_sections
from personify.profiles.predictions import read_predictions
from personify.profiles.state import (
    ProfileState,
    decode_state,
    merge_states,
    state_json,
    state_text,
)
from personify.profiles.tables import (
    applied_events,
    identities,
    profile_merges,
    profile_versions,
    profiles,
)
from personify.store.database import Database, aware

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_MAX_MERGE_DEPTH = 64
# "<event_time_ms>:<sourceId>:<messageId>" with ids of at most 512 characters fits well within
MAX_CURSOR_CHARS = 1024
# event times are stored as signed 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT)
_MIN_TIME_MS, _MAX_TIME_MS = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A profile row: its canonical id, version, state (as stored JSON) and times."""

    profile_id: str
    version: int
    blob: str
    created_at: datetime
    updated_at: datetime

    def state(self) -> ProfileState:
        """The decoded state."""
        return decode_state(self.blob)


@dataclass(frozen=True, slots=True)
class ProfileVersion:
    """One committed change: which events, when, and the JSON diff of the state."""

    profile_id: str
    version: int
    changed_at: datetime
    kind: str
    event_time_ms: int | None
    message_ids: list[str]
    diff: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API returns."""
        return {
            "version": self.version,
            "kind": self.kind,
            "changedAt": self.changed_at.isoformat(),
            "eventTime": format_ms(self.event_time_ms) if self.event_time_ms is not None else None,
            "messageIds": self.message_ids,
            "sections": changed_sections(self.diff),
            "diff": self.diff,
        }


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """An applied event as the timeline shows it."""

    event_key: str
    event_time_ms: int
    payload: Any

    @property
    def cursor(self) -> str:
        """Where the next (older) page starts."""
        return f"{self.event_time_ms}:{self.event_key}"


class TimelineArchive(Protocol):
    """Where a profile's events older than the state database keeps are read from (the lake)."""

    def events(
        self,
        ids: Sequence[str],
        *,
        before: tuple[int, str] | None,
        until_ms: int,
        limit: int,
    ) -> list[TimelineEvent]:
        """Up to ``limit`` events of any of ``ids`` with an event time before ``until_ms``,
        newest first by (event time, event key), older than the cursor ``before`` if given;
        each event once."""
        ...


@dataclass(frozen=True, slots=True)
class MergeRecord:
    """A profile merged into another: which ids came along, when, from which events."""

    into_profile_id: str
    from_profile_id: str
    ids: list[str]
    message_ids: list[str]
    merged_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API returns."""
        return {
            "from": self.from_profile_id,
            "into": self.into_profile_id,
            "ids": self.ids,
            "messageIds": self.message_ids,
            "mergedAt": self.merged_at.isoformat(),
        }


def parse_cursor(cursor: str) -> tuple[int, str] | None:
    """``"<event_time_ms>:<event_key>"`` back into its parts; ``None`` unless it could be one
    this API returned (a time the database can compare with, a key without NUL)."""
    if len(cursor) > MAX_CURSOR_CHARS or "\x00" in cursor:
        return None
    head, sep, tail = cursor.partition(":")
    digits = head.removeprefix("-")
    # isdigit() alone takes "²" and other digits int() refuses
    if not sep or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    time_ms = int(head)
    if not _MIN_TIME_MS <= time_ms <= _MAX_TIME_MS:
        return None
    return time_ms, tail


class ProfileRepository:
    """Read access to profiles, their history and their timeline."""

    def __init__(self, db: Database, features: FeatureSet) -> None:
        self._db = db
        self._features = features

    def predictions(self, profile_id: str) -> dict[str, Any]:
        """The profile's current predictions by target (``personify.profiles.predictions``)."""
        with self._db.connect() as conn:
            return read_predictions(conn, [profile_id]).get(profile_id, {})

    def find(self, identity: str) -> StoredProfile | None:
        """The profile that ``identity`` (a userId, anonymousId or profile id) resolves to."""
        query = (
            sa.select(
                profiles.c.profile_id,
                profiles.c.version,
                profiles.c.state,
                profiles.c.created_at,
                profiles.c.updated_at,
            )
            .select_from(
                identities.join(profiles, identities.c.profile_id == profiles.c.profile_id)
            )
            .where(identities.c.identity == identity)
        )
        with self._db.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return StoredProfile(
            profile_id=row.profile_id,
            version=int(row.version),
            # JSON, also when stored compressed (the cache embeds it as raw JSON)
            blob=state_text(row.state),
            created_at=aware(row.created_at),  # type: ignore[arg-type]
            updated_at=aware(row.updated_at),  # type: ignore[arg-type]
        )

    def resolve(self, identity: str) -> str | None:
        """The canonical profile id of ``identity``."""
        with self._db.connect() as conn:
            value = conn.execute(
                sa.select(identities.c.profile_id).where(identities.c.identity == identity)
            ).scalar()
        return str(value) if value is not None else None

    def ids(self, profile_id: str) -> list[str]:
        """Every id (userId, anonymousId, previousId) that resolves to ``profile_id``."""
        with self._db.connect() as conn:
            found = conn.execute(
                sa.select(identities.c.identity)
                .where(identities.c.profile_id == profile_id)
                .order_by(identities.c.identity)
            ).scalars()
            return [str(identity) for identity in found]

    def versions(
        self, profile_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[ProfileVersion]:
        """The profile's versions, newest first, older than version ``before`` when given."""
        query = sa.select(profile_versions).where(profile_versions.c.profile_id == profile_id)
        if before is not None:
            query = query.where(profile_versions.c.version < before)
        query = query.order_by(profile_versions.c.version.desc()).limit(limit)
        with self._db.connect() as conn:
            rows = list(conn.execute(query))
        return [
            ProfileVersion(
                profile_id=r.profile_id,
                version=int(r.version),
                changed_at=aware(r.changed_at),  # type: ignore[arg-type]
                kind=r.kind,
                event_time_ms=r.event_time_ms,
                message_ids=_decode(r.message_ids),
                diff=_decode(r.diff),
            )
            for r in rows
        ]

    def merges(self, profile_id: str) -> list[MergeRecord]:
        """The profiles merged into ``profile_id``, oldest first."""
        query = (
            sa.select(profile_merges)
            .where(profile_merges.c.into_profile_id == profile_id)
            .order_by(profile_merges.c.merged_at, profile_merges.c.id)
        )
        with self._db.connect() as conn:
            rows = list(conn.execute(query))
        return [
            MergeRecord(
                into_profile_id=r.into_profile_id,
                from_profile_id=r.from_profile_id,
                ids=_decode(r.ids),
                message_ids=_decode(r.message_ids),
                merged_at=aware(r.merged_at),  # type: ignore[arg-type]
            )
            for r in rows
        ]

    def timeline(
        self, profile_id: str, *, before: tuple[int, str] | None = None, limit: int = 50
    ) -> list[TimelineEvent]:
        """The profile's events, newest first by event time, older than ``before`` if given."""
        query = sa.select(
            applied_events.c.event_key, applied_events.c.event_time_ms, applied_events.c.payload
        ).where(applied_events.c.profile_id == profile_id)
        if before is not None:
            time_ms, key = before
            query = query.where(
                sa.or_(
                    applied_events.c.event_time_ms < time_ms,
                    sa.and_(
                        applied_events.c.event_time_ms == time_ms,
                        applied_events.c.event_key < key,
                    ),
                )
            )
        query = query.order_by(
            applied_events.c.event_time_ms.desc(), applied_events.c.event_key.desc()
        ).limit(limit)
        with self._db.connect() as conn:
            rows = list(conn.execute(query))
        return [TimelineEvent(r.event_key, int(r.event_time_ms), _decode(r.payload)) for r in rows]

    def state_as_of(self, profile_id: str, at: datetime) -> ProfileState | None:
        """The profile as the system held it at ``at``, including profiles merged into it later.

        Its own versions up to ``at`` are replayed from the latest snapshot; each profile
        merged into it after ``at`` contributes its own state as of ``at`` (recursively),
        combined with the same merge the worker uses. ``None`` if nothing existed yet.
        """
        return self._as_of(profile_id, at, 0)

    def _as_of(self, profile_id: str, at: datetime, depth: int) -> ProfileState | None:
        if depth > _MAX_MERGE_DEPTH:
            return None
        with self._db.connect() as conn:
            document = self._own_document_as_of(conn, profile_id, at)
            later = list(
                conn.execute(
                    sa.select(profile_merges.c.from_profile_id).where(
                        profile_merges.c.into_profile_id == profile_id,
                        profile_merges.c.merged_at > at,
                    )
                ).scalars()
            )
        state = decode_state(_encode(document)) if document is not None else None
        for merged_id in later:
            other = self._as_of(str(merged_id), at, depth + 1)
            if other is None:
                continue
            if state is None:
                state = other
            else:
                merge_states(state, other, self._features)
        return state

    def _own_document_as_of(
        self, conn: sa.Connection, profile_id: str, at: datetime
    ) -> dict[str, Any] | None:
        document = replay_document(conn, profile_id, at=at)
        if document is None:
            return None
        # an id can come back as a profile after it was merged away: between the two it was
        # no profile of its own (its state was in the profile it was merged into)
        merged_away = conn.execute(
            sa.select(sa.func.max(profile_merges.c.merged_at)).where(
                profile_merges.c.from_profile_id == profile_id, profile_merges.c.merged_at <= at
            )
        ).scalar()
        if merged_away is None:
            return document
        changed = conn.execute(
            sa.select(sa.func.max(profile_versions.c.changed_at)).where(
                profile_versions.c.profile_id == profile_id, profile_versions.c.changed_at <= at
            )
        ).scalar()
        if changed is None or aware(changed) < aware(merged_away):  # type: ignore[operator]
            return None
        return document


def replay_document(
    conn: sa.Connection,
    profile_id: str,
    *,
    at: datetime | None = None,
    through_version: int | None = None,
) -> dict[str, Any] | None:
    """The profile's own stored state document as of ``at`` and/or as of version
    ``through_version``: the latest snapshot at or before the bound, with the diffs after it
    replayed. ``None`` when no snapshot lies within the bound."""
    bounds: list[sa.ColumnElement[bool]] = [profile_versions.c.profile_id == profile_id]
    if at is not None:
        bounds.append(profile_versions.c.changed_at <= at)
    if through_version is not None:
        bounds.append(profile_versions.c.version <= through_version)
    base = conn.execute(
        sa.select(sa.func.max(profile_versions.c.version)).where(
            *bounds, profile_versions.c.snapshot.is_not(None)
        )
    ).scalar()
    # a profile at rest keeps its only version's state in its row (``personify.profiles.
    # retention``): that version is the profile's newest, so nothing is replayed after it
    at_rest = conn.execute(
        sa.select(profiles.c.version, profiles.c.state, profiles.c.updated_at).where(
            profiles.c.profile_id == profile_id, profiles.c.history_in_row.is_(True)
        )
    ).first()
    if (
        at_rest is not None
        and (through_version is None or at_rest.version <= through_version)
        and (at is None or aware(at_rest.updated_at) <= at)  # type: ignore[operator]
        and (base is None or at_rest.version > base)
    ):
        document: dict[str, Any] = _decode(state_json(at_rest.state))
        return document
    if base is None:
        return None
    rows = conn.execute(
        sa.select(profile_versions.c.version, profile_versions.c.diff, profile_versions.c.snapshot)
        .where(*bounds, profile_versions.c.version >= base)
        .order_by(profile_versions.c.version)
    )
    document = {}
    for version, diff, snapshot in rows:
        if version == base:
            document = _decode(snapshot)
        else:
            apply_diff(document, _decode(diff))
    return document
