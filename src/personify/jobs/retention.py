"""The retention jobs: prune profiles (``personify profiles prune``) and trim the event log
(``personify events trim``), run on a schedule by ``personify serve``.

Both are safe to run from several processes at once and as often as one likes: each removes
only what is past its retention, and what is gone is gone for everyone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from personify.clock import Clock, SystemClock, from_epoch_us
from personify.eventlog.base import EventLog
from personify.jobs.schedule import PeriodicJob
from personify.profiles.retention import ProfilePruner
from personify.settings import Settings
from personify.store.database import Database

# a server that restarts more often than an interval still runs its jobs
_MAX_FIRST_DELAY_S = 60.0


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What one trim of the event log removed."""

    removed: int
    retention_hours: float
    cutoff_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``personify events trim`` prints."""
        return {
            "removed": self.removed,
            "retentionHours": self.retention_hours,
            "cutoff": from_epoch_us(round(self.cutoff_s * 1_000_000)).isoformat(),
        }


class LogTrimmer:
    """Removes the log records every known group has committed and that are past retention."""

    def __init__(
        self, log: EventLog, *, retention_hours: float, clock: Clock | None = None
    ) -> None:
        self._log = log
        self._retention_hours = retention_hours
        self._clock = clock or SystemClock()

    async def trim(self) -> TrimResult:
        """Truncate the log once, against the clock's current time."""
        now = self._clock.time()
        retention_s = timedelta(hours=self._retention_hours).total_seconds()
        removed = await self._log.truncate(retention_s=retention_s, now=now)
        return TrimResult(removed, self._retention_hours, now - retention_s)


def retention_jobs(
    settings: Settings, db: Database, log: EventLog, *, clock: Clock | None = None
) -> list[PeriodicJob]:
    """Profile pruning every ``profile_prune_interval_s``, log trimming every
    ``eventlog_trim_interval_s``."""
    pruner = ProfilePruner.from_settings(settings, db, clock=clock)
    trimmer = LogTrimmer(log, retention_hours=settings.eventlog_retention_hours, clock=clock)

    async def prune() -> dict[str, Any]:
        # deletes in many short transactions: a thread, never the event loop
        return (await asyncio.to_thread(pruner.prune)).to_dict()

    async def trim() -> dict[str, Any]:
        return (await trimmer.trim()).to_dict()

    return [
        PeriodicJob(
            "profile-prune",
            prune,
            settings.profile_prune_interval_s,
            first_delay_s=min(settings.profile_prune_interval_s, _MAX_FIRST_DELAY_S),
        ),
        PeriodicJob(
            "eventlog-trim",
            trim,
            settings.eventlog_trim_interval_s,
            first_delay_s=min(settings.eventlog_trim_interval_s, _MAX_FIRST_DELAY_S),
        ),
    ]
