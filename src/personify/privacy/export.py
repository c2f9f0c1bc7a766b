"""Export: everything held about a person as one JSON document (the right of access).

The document has one key per part: ``profile`` (the stored state of each of the person's
profiles), ``history`` (every version with its diff, and the merges), ``events`` (the
timeline the state database keeps), ``memberships`` (every stay in a segment, current and
past), ``predictions``, ``decisions`` (the content exposures), ``experiments`` (the sticky
assignments), ``recommendations``, ``deadLetters`` and ``lakeEvents`` (from the lake's
``fact_events``, by canonical user and by each id). The person is found as an erasure finds
them (``resolve_subject``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import msgspec
import pyarrow as pa
import sqlalchemy as sa

from personify.content.tables import content_exposures
from personify.errors import NotFound
from personify.events.hashing import PiiHasher
from personify.experiments.tables import experiment_assignments
from personify.lake.warehouse import Warehouse
from personify.privacy.erasure import Subject, resolve_subject
from personify.privacy.state import DeadLetterEraser
from personify.profiles.state import state_json
from personify.profiles.tables import (
    applied_events,
    profile_merges,
    profile_predictions,
    profile_versions,
    profiles,
)
from personify.recommend.tables import recommend_profiles, recommend_user_index
from personify.segments.tables import segment_members
from personify.store.database import Database, aware
from personify.store.tables import failed_events

__all__ = ["PARTS", "Exporter"]

PARTS = (
    "profile",
    "history",
    "events",
    "memberships",
    "predictions",
    "decisions",
    "experiments",
    "recommendations",
    "deadLetters",
    "lakeEvents",
)
"""The parts of an export document, each a key of it."""

_decode = msgspec.json.decode


def _json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return _decode(state_json(text))
    except msgspec.DecodeError:
        return text


def _holds(part: Any) -> bool:
    """Whether a part of the document holds anything (its lists are not all empty)."""
    if isinstance(part, dict):
        return any(_holds(value) for value in part.values())
    return bool(part)


def _moment(value: Any) -> Any:
    if isinstance(value, datetime):
        return aware(value).isoformat()  # type: ignore[union-attr]
    if isinstance(value, date):
        return value.isoformat()
    return value


def _rows(
    conn: sa.Connection, query: sa.Select[Any], *, json_columns: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    found = []
    for row in conn.execute(query):
        item = {
            key: _json(value) if key in json_columns else _moment(value)
            for key, value in row._mapping.items()
        }
        found.append(item)
    return found


class Exporter:
    """Builds the export document of the person behind an id."""

    def __init__(
        self,
        db: Database,
        hasher: PiiHasher,
        *,
        warehouse: Callable[[], Warehouse] | None = None,
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._warehouse = warehouse
        self._dead_letters = DeadLetterEraser(db)

    def subject(self, identity: str) -> Subject:
        """The person behind ``identity``, or just the id when no profile links it."""
        resolved = resolve_subject(self._db, self._hasher, identity)
        found = Subject.of(identity)
        return found.union(resolved) if resolved is not None else found

    def export(self, identity: str) -> dict[str, Any]:
        """The document (module docstring); ``NotFound`` when nothing is held about them."""
        subject = self.subject(identity)
        document = {"identity": identity, **self._state(subject)}
        document["deadLetters"] = self._dead_letter_rows(subject)
        document["lakeEvents"] = self._lake_events(subject)
        held = any(_holds(document[part]) for part in PARTS)
        if not held:
            raise NotFound(f"nothing is held about the id {identity!r}", code="profile_not_found")
        document["subject"] = {
            "profileIds": sorted(subject.profile_ids),
            "ids": sorted(subject.ids),
            "hashedIdentifiers": sorted(subject.hashed),
        }
        return document

    def _state(self, subject: Subject) -> dict[str, Any]:
        pids = sorted(subject.profile_ids)
        ids = sorted(subject.ids | subject.profile_ids)
        with self._db.connect() as conn:
            profile_rows = _rows(
                conn,
                sa.select(
                    profiles.c.profile_id,
                    profiles.c.version,
                    profiles.c.state,
                    profiles.c.first_seen_ms,
                    profiles.c.last_seen_ms,
                    profiles.c.personalization_allowed,
                    profiles.c.created_at,
                    profiles.c.updated_at,
                )
                .where(profiles.c.profile_id.in_(pids))
                .order_by(profiles.c.profile_id),
                json_columns=("state",),
            )
            versions = _rows(
                conn,
                sa.select(profile_versions)
                .where(profile_versions.c.profile_id.in_(pids))
                .order_by(profile_versions.c.profile_id, profile_versions.c.version),
                json_columns=("message_ids", "diff", "snapshot"),
            )
            merges = _rows(
                conn,
                sa.select(profile_merges)
                .where(
                    sa.or_(
                        profile_merges.c.into_profile_id.in_(pids),
                        profile_merges.c.from_profile_id.in_(pids),
                    )
                )
                .order_by(profile_merges.c.id),
                json_columns=("ids", "message_ids"),
            )
            events = _rows(
                conn,
                sa.select(applied_events)
                .where(applied_events.c.profile_id.in_(pids))
                .order_by(applied_events.c.event_time_ms, applied_events.c.event_key),
                json_columns=("payload",),
            )
            memberships = _rows(
                conn,
                sa.select(segment_members)
                .where(segment_members.c.profile_id.in_(pids))
                .order_by(segment_members.c.entered_at, segment_members.c.id),
            )
            predictions = _rows(
                conn,
                sa.select(profile_predictions)
                .where(profile_predictions.c.profile_id.in_(pids))
                .order_by(profile_predictions.c.profile_id, profile_predictions.c.target),
                json_columns=("value",),
            )
            decisions = _rows(
                conn,
                sa.select(content_exposures)
                .where(content_exposures.c.profile_id.in_(ids))
                .order_by(content_exposures.c.exposed_at, content_exposures.c.decision_id),
            )
            assignments = _rows(
                conn,
                sa.select(experiment_assignments)
                .where(experiment_assignments.c.unit.in_(ids))
                .order_by(experiment_assignments.c.experiment_key, experiment_assignments.c.unit),
            )
            recent = _rows(
                conn,
                sa.select(recommend_profiles).where(recommend_profiles.c.profile_id.in_(pids)),
                json_columns=("document",),
            )
            indexed = _rows(
                conn,
                sa.select(recommend_user_index).where(recommend_user_index.c.profile_id.in_(pids)),
                json_columns=("items",),
            )
        return {
            "profile": profile_rows,
            "history": {"versions": versions, "merges": merges},
            "events": events,
            "memberships": memberships,
            "predictions": predictions,
            "decisions": decisions,
            "experiments": assignments,
            "recommendations": {"recent": recent, "index": indexed} if recent or indexed else {},
        }

    def _dead_letter_rows(self, subject: Subject) -> list[dict[str, Any]]:
        ids = self._dead_letters.matching(subject)
        found: list[dict[str, Any]] = []
        with self._db.connect() as conn:
            for start in range(0, len(ids), 500):
                found.extend(
                    _rows(
                        conn,
                        sa.select(failed_events)
                        .where(failed_events.c.id.in_(ids[start : start + 500]))
                        .order_by(failed_events.c.id),
                        json_columns=("payload",),
                    )
                )
        return found

    def _lake_events(self, subject: Subject) -> list[dict[str, Any]]:
        if self._warehouse is None:
            return []
        keys = sorted(subject.ids | subject.profile_ids)
        with self._warehouse() as warehouse:
            if warehouse.version is None:
                return []
            marks = ", ".join("?" for _ in keys)
            sql = (
                f"SELECT * FROM fact_events WHERE user_key IN ({marks}) OR user_id IN ({marks}) "
                f"OR anonymous_id IN ({marks}) OR previous_id IN ({marks}) "
                "ORDER BY timestamp, message_id"
            )
            table: pa.Table = warehouse.connection.sql(sql, params=keys * 4).to_arrow_table()
        rows = table.to_pylist()
        return [
            {
                key: _json(value)
                if key in ("properties", "traits", "context", "extra")
                else _moment(value)
                for key, value in row.items()
            }
            for row in rows
        ]
