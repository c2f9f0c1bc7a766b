"""Dead letters: events rejected at ingest or failed in the worker, kept with their reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.store.database import Database, aware
from personify.store.tables import failed_events


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """One dead letter: where it failed, why, and the payload (PII already hashed)."""

    id: int
    stage: str
    source_id: str | None
    message_id: str | None
    code: str
    reason: str
    payload: Any
    attempts: int
    created_at: datetime
    replayed_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the admin API returns."""
        return {
            "id": self.id,
            "stage": self.stage,
            "sourceId": self.source_id,
            "messageId": self.message_id,
            "code": self.code,
            "reason": self.reason,
            "payload": self.payload,
            "attempts": self.attempts,
            "createdAt": self.created_at.isoformat(),
            "replayedAt": self.replayed_at.isoformat() if self.replayed_at else None,
        }


@dataclass(frozen=True, slots=True)
class NewFailedEvent:
    """A dead letter to record."""

    stage: str
    code: str
    reason: str
    payload: Any
    source_id: str | None = None
    message_id: str | None = None
    attempts: int = 1


@dataclass(slots=True)
class DeadLetterCounts:
    """Dead letters by stage: waiting for a replay, and recorded since a moment."""

    waiting: dict[str, int] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)

    @property
    def total_waiting(self) -> int:
        """Every stage's dead letters not replayed yet."""
        return sum(self.waiting.values())


def _failed_event(m: sa.RowMapping) -> FailedEvent:
    return FailedEvent(
        id=m["id"],
        stage=m["stage"],
        source_id=m["source_id"],
        message_id=m["message_id"],
        code=m["code"],
        reason=m["reason"],
        payload=_decode(m["payload"]),
        attempts=m["attempts"],
        created_at=aware(m["created_at"]),  # type: ignore[arg-type]
        replayed_at=aware(m["replayed_at"]),
    )


def _storable(text: str) -> str:
    # PostgreSQL's text cannot hold NUL, and a dead letter must be storable whatever it carries
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _decode(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


class FailedEventRepository:
    """Append and list dead letters."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    def add_many(self, items: Sequence[NewFailedEvent]) -> None:
        """Record dead letters in one transaction."""
        if not items:
            return
        now = self._clock.now()
        rows = [
            {
                "stage": _storable(item.stage),
                "source_id": _storable(item.source_id) if item.source_id is not None else None,
                "message_id": _storable(item.message_id) if item.message_id is not None else None,
                "code": _storable(item.code),
                "reason": _storable(item.reason),
                # JSON escapes a NUL inside a string; only a raw text payload can carry one
                "payload": msgspec.json.encode(item.payload).decode()
                if not isinstance(item.payload, str)
                else _storable(item.payload),
                "attempts": item.attempts,
                "created_at": now,
            }
            for item in items
        ]
        with self._db.begin() as conn:
            conn.execute(failed_events.insert(), rows)

    def list(
        self,
        *,
        stage: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        include_replayed: bool = True,
    ) -> list[FailedEvent]:
        """Dead letters after ``after_id``, oldest first."""
        query = sa.select(failed_events).where(failed_events.c.id > after_id)
        if stage:
            query = query.where(failed_events.c.stage == stage)
        if not include_replayed:
            query = query.where(failed_events.c.replayed_at.is_(None))
        query = query.order_by(failed_events.c.id).limit(limit)
        with self._db.connect() as conn:
            return [_failed_event(row._mapping) for row in conn.execute(query)]

    def get(self, failed_id: int) -> FailedEvent | None:
        """The dead letter ``failed_id``, or None."""
        with self._db.connect() as conn:
            row = conn.execute(sa.select(failed_events).where(failed_events.c.id == failed_id))
            found = row.first()
        return _failed_event(found._mapping) if found is not None else None

    def counts(self, *, since: datetime) -> DeadLetterCounts:
        """Every stage's dead letters waiting for a replay, and those recorded since
        ``since`` (one grouped query)."""
        table = failed_events
        waiting = sa.func.sum(sa.case((table.c.replayed_at.is_(None), 1), else_=0))
        recent = sa.func.sum(sa.case((table.c.created_at >= since, 1), else_=0))
        query = sa.select(table.c.stage, waiting, recent).group_by(table.c.stage)
        found = DeadLetterCounts()
        with self._db.connect() as conn:
            for stage, stage_waiting, stage_recent in conn.execute(query):
                found.waiting[stage] = int(stage_waiting or 0)
                found.recent[stage] = int(stage_recent or 0)
        return found

    def mark_replayed(self, ids: Sequence[int]) -> None:
        """Record that these dead letters were fed back into the log."""
        if not ids:
            return
        with self._db.begin() as conn:
            conn.execute(
                failed_events.update()
                .where(failed_events.c.id.in_(list(ids)))
                .values(replayed_at=self._clock.now())
            )
