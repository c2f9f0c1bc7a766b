"""Worker heartbeats in the state database, so any API node can report every worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from personify.store.database import Database, aware
from personify.worker.tables import worker_heartbeats


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one worker last reported."""

    consumer: str
    group: str
    started_at: datetime
    updated_at: datetime
    events_applied: int
    duplicates: int
    events_failed: int
    events_per_s: float
    lag: int | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /v1/worker/status``."""
        return {
            "consumer": self.consumer,
            "group": self.group,
            "startedAt": self.started_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "eventsApplied": self.events_applied,
            "duplicates": self.duplicates,
            "eventsFailed": self.events_failed,
            "eventsPerSecond": self.events_per_s,
            "lag": self.lag,
        }


class HeartbeatRepository:
    """Upserts and lists worker heartbeats (portable: UPDATE, then INSERT if nothing matched)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def beat(self, beat: Heartbeat) -> None:
        """Record ``beat`` as the consumer's latest report."""
        values = {
            "group_name": beat.group,
            "started_at": beat.started_at,
            "updated_at": beat.updated_at,
            "events_applied": beat.events_applied,
            "duplicates": beat.duplicates,
            "events_failed": beat.events_failed,
            "events_per_s": beat.events_per_s,
            "lag": beat.lag,
        }
        with self._db.begin() as conn:
            updated = conn.execute(
                worker_heartbeats.update()
                .where(worker_heartbeats.c.consumer == beat.consumer)
                .values(**values)
            ).rowcount
            if not updated:
                conn.execute(worker_heartbeats.insert().values(consumer=beat.consumer, **values))

    def recent(self, *, since: datetime, group: str | None = None) -> list[Heartbeat]:
        """Heartbeats updated at or after ``since``, newest first."""
        query = sa.select(worker_heartbeats).where(worker_heartbeats.c.updated_at >= since)
        if group:
            query = query.where(worker_heartbeats.c.group_name == group)
        query = query.order_by(worker_heartbeats.c.updated_at.desc())
        with self._db.connect() as conn:
            rows = list(conn.execute(query))
        return [
            Heartbeat(
                consumer=r.consumer,
                group=r.group_name,
                started_at=aware(r.started_at),  # type: ignore[arg-type]
                updated_at=aware(r.updated_at),  # type: ignore[arg-type]
                events_applied=int(r.events_applied),
                duplicates=int(r.duplicates),
                events_failed=int(r.events_failed),
                events_per_s=float(r.events_per_s),
                lag=None if r.lag is None else int(r.lag),
            )
            for r in rows
        ]

    def prune(self, *, older_than: timedelta, now: datetime) -> int:
        """Forget workers silent for longer than ``older_than``."""
        with self._db.begin() as conn:
            deleted = conn.execute(
                worker_heartbeats.delete().where(worker_heartbeats.c.updated_at < now - older_than)
            )
            return int(deleted.rowcount)
