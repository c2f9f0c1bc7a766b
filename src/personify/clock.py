"""Time, from one injectable place, so tests can move it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The current time as seconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current time as seconds since the epoch."""
        return time.time()


class FrozenClock:
    """A clock that stays where it is put; tests move it with ``advance``."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        """The frozen time."""
        return self._now

    def time(self) -> float:
        """The frozen time as epoch seconds."""
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        from datetime import timedelta

        self._now = self._now + timedelta(seconds=seconds)


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z``: the one format events carry."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
