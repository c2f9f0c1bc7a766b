"""Backfill: a new or edited rule is evaluated for every stored profile, in the background.

Saving a definition records a backfill (``segment_backfills``, status ``pending``) in the
same transaction. ``SegmentBackfill.run`` is one pass over every profile, by id, a page per
transaction: each page's rows are locked (PostgreSQL), their states read, the counters of
rules saved since they were written are counted from their timelines (``fill_counters``),
and every active rule is evaluated at now, writing only what changed (reason
``backfill``). A pass serves every backfill requested before it started, and reports its
progress in their rows (``done`` of ``total``) as it goes: ``GET /v1/segments/{key}`` shows
it, and ``personify segments backfill`` draws it as a progress bar.

``personify serve`` runs a pass whenever one is pending (``segment-backfill`` job). Two
passes at once (the job and the command) are safe: evaluation writes only differences, under
the rows' locks; the rows of a pass that stopped half-way are taken up by the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.tables import profiles
from personify.segments.stage import SegmentStage
from personify.segments.tables import segment_backfills
from personify.store.database import Database

__all__ = ["BackfillResult", "SegmentBackfill"]

PENDING = "pending"
RUNNING = "running"
DONE = "done"
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """What one pass did (``backfills`` is how many requests it served)."""

    backfills: int
    profiles: int
    entries: int
    exits: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``personify segments backfill`` and of the job's status."""
        return {
            "backfills": self.backfills,
            "profiles": self.profiles,
            "entries": self.entries,
            "exits": self.exits,
            "elapsedSeconds": round(self.elapsed_s, 3),
        }


class SegmentBackfill:
    """Evaluates every stored profile again after definitions changed (module docstring)."""

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

    def run(self, *, progress: Progress | None = None) -> BackfillResult:
        """One pass over every profile, if any backfill waits; ``progress(done, total)`` is
        called after each page."""
        started = time.monotonic()
        b = segment_backfills.c
        with self._db.begin() as conn:
            waiting = [
                int(row_id)
                for row_id in conn.execute(
                    sa.select(b.id).where(b.status.in_([PENDING, RUNNING])).order_by(b.id)
                ).scalars()
            ]
            if not waiting:
                return BackfillResult(0, 0, 0, 0, time.monotonic() - started)
            total = int(conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar_one())
            now = self._clock.now()
            conn.execute(
                segment_backfills.update()
                .where(b.id.in_(waiting))
                .values(status=RUNNING, total=total, done=0, started_at=now, updated_at=now)
            )
        done = entries = exits = 0
        after = ""
        while True:
            with self._db.begin() as conn:
                rows = conn.execute(
                    sa.select(profiles.c.profile_id, profiles.c.version, profiles.c.state)
                    .where(profiles.c.profile_id > after)
                    .order_by(profiles.c.profile_id)
                    .limit(self._page_size)
                    .with_for_update()
                ).all()
                if rows:
                    changes = self._stage.evaluate_stored(
                        conn, rows, self._clock.now(), reason="backfill"
                    )
                    entries += len(changes.entries)
                    exits += len(changes.exits)
                    done += len(rows)
                    after = str(rows[-1][0])
                finished = len(rows) < self._page_size
                # profiles created meanwhile are counted as they are reached
                total = max(total, done)
                now = self._clock.now()
                conn.execute(
                    segment_backfills.update()
                    .where(b.id.in_(waiting))
                    .values(
                        done=done,
                        total=total,
                        updated_at=now,
                        status=DONE if finished else RUNNING,
                        finished_at=now if finished else None,
                    )
                )
            if progress is not None:
                progress(done, total)
            if finished:
                return BackfillResult(
                    len(waiting), done, entries, exits, time.monotonic() - started
                )
