"""The sweep: a profile leaves (or enters) a window-based segment when the window slides past
its events, with no new event from it.

The worker stores, per profile, the first time one of its counted events leaves its window
(``segment_due``). ``SegmentSweep.sweep`` takes the profiles due by now, in pages, in time
order, and evaluates each again at now in a transaction of its own (the profile rows are
locked first on PostgreSQL, so a worker batch on the same profile waits or is waited for);
only due profiles are read, never everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.events import datetime_ms
from personify.profiles.tables import profiles
from personify.segments.stage import SegmentStage
from personify.segments.tables import segment_due
from personify.store.database import Database

__all__ = ["SegmentSweep", "SweepResult"]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did."""

    profiles: int
    entries: int
    exits: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``personify segments sweep`` and the job's status."""
        return {
            "profiles": self.profiles,
            "entries": self.entries,
            "exits": self.exits,
            "elapsedSeconds": round(self.elapsed_s, 3),
        }


class SegmentSweep:
    """Re-evaluates the profiles whose windows have slid (module docstring)."""

    def __init__(
        self,
        db: Database,
        stage: SegmentStage,
        *,
        clock: Clock | None = None,
        page_size: int = 500,
    ) -> None:
        self._db = db
        self._stage = stage
        self._clock = clock or SystemClock()
        self._page_size = max(1, page_size)

    def sweep(self) -> SweepResult:
        """Evaluate every profile due by now; returns the counts."""
        started = time.monotonic()
        now = self._clock.now()
        now_ms = datetime_ms(now)
        swept = entries = exits = 0
        while True:
            with self._db.begin() as conn:
                due = [
                    str(pid)
                    for pid in conn.execute(
                        sa.select(segment_due.c.profile_id)
                        .where(segment_due.c.due_ms <= now_ms)
                        .order_by(segment_due.c.due_ms, segment_due.c.profile_id)
                        .limit(self._page_size)
                    ).scalars()
                ]
                if not due:
                    break
                rows = conn.execute(
                    sa.select(profiles.c.profile_id, profiles.c.version, profiles.c.state)
                    .where(profiles.c.profile_id.in_(due))
                    .order_by(profiles.c.profile_id)
                    .with_for_update()
                ).all()
                changes = self._stage.evaluate_stored(conn, rows, now, reason="sweep")
                # evaluated profiles are due later now; what is still due by now (a profile
                # merged away meanwhile, or with nothing left to count) is not taken again
                conn.execute(
                    segment_due.delete().where(
                        segment_due.c.profile_id.in_(due), segment_due.c.due_ms <= now_ms
                    )
                )
            swept += len(due)
            entries += len(changes.entries)
            exits += len(changes.exits)
        return SweepResult(swept, entries, exits, time.monotonic() - started)
