"""The event as the profile code reads it: parsed once from the normalised JSON in the log.

``view_event`` is the only place that interprets the log's event JSON for profiles, so the
stream worker and any batch recomputation (over the lake) read events identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec

from personify.clock import EPOCH, epoch_us, format_timestamp, has_timestamp_shape
from personify.errors import ValidationError
from personify.events.normalize import EVENT_TYPES, parse_timestamp

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


@lru_cache(maxsize=4096)
def _day_ms(date: str) -> int:
    return epoch_us(datetime.fromisoformat(date).replace(tzinfo=UTC)) // 1000


def parse_ms(name: str, value: Any) -> int:
    """An ISO-8601 timestamp as integer epoch milliseconds (exact, so ordering never drifts)."""
    # fast path: the canonical form ingest writes, 2024-05-01T09:30:00.123Z
    if has_timestamp_shape(value):
        try:
            return (
                _day_ms(value[:10])
                + int(value[11:13]) * MS_PER_HOUR
                + int(value[14:16]) * 60_000
                + int(value[17:19]) * 1000
                + int(value[20:23])
            )
        except ValueError:
            pass  # not digits after all: the general parser below names the problem
    # any other shape is read exactly as ingest reads it
    return datetime_ms(parse_timestamp(name, value))


def format_ms(ms: int) -> str:
    """Epoch milliseconds as the ISO-8601 UTC form events carry (``…T12:00:00.000Z``)."""
    return format_timestamp(EPOCH + timedelta(milliseconds=ms))


def datetime_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return epoch_us(moment) // 1000


def event_name(event_type: str, event: Mapping[str, Any]) -> str:
    """The name features count an event under: a track's event name, else ``$`` + its type."""
    if event_type == "track":
        return str(event.get("event") or "").strip()
    return "$" + event_type


# a Struct, not a dataclass: made once per event on the hottest path, where its __init__
# costs less; gc=False because a batch keeps every one of them alive until it commits, and
# none can be part of a reference cycle (its data is decoded JSON), so the garbage
# collector need not track them
class ProfileEvent(msgspec.Struct, gc=False):
    """One event, with what every profile computation needs already extracted."""

    key: str
    message_id: str
    ts: int
    type: str
    name: str
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    data: Mapping[str, Any]
    ids: tuple[str, ...]  # every identity the event links: userId, anonymousId, previousId


def _optional_id(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise ValidationError(f"{name} must be a string", code="invalid_field")
    return value or None


def view_event(event: Any) -> ProfileEvent:
    """Read a normalised event; raises ``ValidationError`` when it cannot be applied.

    The event time is ``timestamp`` (already clock-corrected at ingest); an event flagged
    ``future_timestamp`` is placed at ``receivedAt`` instead, so one device with a wrong clock
    cannot push a profile's windows into the future.
    """
    if type(event) is not dict and not isinstance(event, Mapping):
        raise ValidationError("an event must be a JSON object", code="invalid_event")
    event_type = event.get("type")
    if event_type not in EVENT_TYPES:
        raise ValidationError(f"unknown event type {event_type!r}", code="invalid_type")
    message_id = event.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise ValidationError("the event has no messageId", code="missing_message_id")
    flags = event.get("flags")
    if isinstance(flags, list) and "future_timestamp" in flags and event.get("receivedAt"):
        ts = parse_ms("receivedAt", event.get("receivedAt"))
    else:
        ts = parse_ms("timestamp", event.get("timestamp"))
    user_id = _optional_id(event, "userId")
    anonymous_id = _optional_id(event, "anonymousId")
    previous_id = _optional_id(event, "previousId") if event_type == "alias" else None
    if user_id is None:
        if anonymous_id is None:
            raise ValidationError("the event has no userId or anonymousId", code="missing_identity")
        ids: tuple[str, ...] = (anonymous_id,)
    else:
        ids = (user_id,) if anonymous_id is None else (user_id, anonymous_id)
    if previous_id is not None:
        ids = (*ids, previous_id)
    name = event_name(str(event_type), event)
    if not name:
        raise ValidationError("a track event needs an event name", code="missing_event_name")
    for field in ("properties", "traits", "context"):
        value = event.get(field)
        if value is not None and type(value) is not dict:
            raise ValidationError(f"{field} must be an object", code="invalid_field")
    source = event.get("sourceId")
    return ProfileEvent(
        key=f"{source or ''}:{message_id}",
        message_id=message_id,
        ts=ts,
        type=str(event_type),
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        data=event,
        ids=ids,
    )
