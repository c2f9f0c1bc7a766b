"""Time, from one injectable place, so tests can move it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec


class Clock(Protocol):
    """Something that tells the current time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The current time as seconds since the epoch."""
        ...

    def now_us(self) -> int:
        """The current time as whole microseconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current time as seconds since the epoch."""
        return time.time()

    def now_us(self) -> int:
        """The current time as whole microseconds since the epoch."""
        # an integer from the kernel's clock: a tenth of what datetime.now() and the
        # subtraction that turns it into microseconds cost, on every ingest request
        return time.time_ns() // 1000


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

    def now_us(self) -> int:
        """The frozen time as whole microseconds since the epoch."""
        return epoch_us(self._now)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now = self._now + timedelta(seconds=seconds)


_encode_datetime = msgspec.json.Encoder().encode
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact, unlike ``timestamp()``)."""
    # from the timedelta's fields: dividing a timedelta by another costs several times more
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(micros: int) -> datetime:
    """The aware UTC datetime ``micros`` microseconds after the epoch (``epoch_us``'s inverse)."""
    return EPOCH + timedelta(microseconds=micros)


def has_timestamp_shape(text: Any) -> bool:
    """Shaped like ``format_timestamp``'s output (``YYYY-MM-DDTHH:MM:SS.mmmZ``); the digits
    are not checked, so a caller still parses what it keeps."""
    return (
        type(text) is str
        and len(text) == 24
        and text[10] == "T"
        and text[23] == "Z"
        and text[19] == "."
        and text[13] == text[16] == ":"
    )


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z``: the one format events carry."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # msgspec writes '"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"' in a fraction of the time isoformat takes
    # (ingest formats a timestamp or two per event); the seconds part is all it is used for
    return f"{_encode_datetime(moment)[1:20].decode()}.{moment.microsecond // 1000:03d}Z"
