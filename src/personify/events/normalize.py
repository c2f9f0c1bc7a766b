"""Validation and normalisation of Segment-spec events, as the collector receives them.

``Normalizer.normalize`` takes any decoded JSON value and either returns the event as it
goes into the log or raises ``ValidationError`` with a machine-readable code. It never
raises anything else, whatever the input (a Hypothesis test holds it to that).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from personify.clock import format_timestamp, has_timestamp_shape
from personify.errors import PayloadTooLarge, ValidationError
from personify.events.hashing import PiiHasher

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
# analytics.js calls one-letter endpoints (/v1/t, /v1/p, ...)
SHORT_TYPES = {
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}

_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_MAX_ID_CHARS = 512
_UTC = UTC


def identifier_value(name: str, value: Any) -> str | None:
    """``value`` of the id field ``name`` as a clean string, None when absent or blank:
    strings are trimmed, numbers accepted; anything else is invalid."""
    if value is None:
        return None
    if (
        type(value) is str
        and 0 < len(value) <= _MAX_ID_CHARS
        and not value[0].isspace()
        and not value[-1].isspace()
        and "\x00" not in value
    ):
        return value  # the usual, already clean id
    return _clean_identifier(name, value)


def _clean_identifier(name: str, value: Any) -> str | None:
    if type(value) is str and "\x00" in value:
        # PostgreSQL cannot store NUL in text, and no real id contains one
        raise ValidationError(
            f"{name} contains a NUL character", code="invalid_field", details={"field": name}
        )
    if type(value) is str:
        text = value.strip() if value[:1].isspace() or value[-1:].isspace() else value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
    else:
        raise ValidationError(
            f"{name} must be a string", code="invalid_field", details={"field": name}
        )
    if len(text) > _MAX_ID_CHARS:
        raise ValidationError(
            f"{name} is longer than {_MAX_ID_CHARS} characters",
            code="invalid_field",
            details={"field": name},
        )
    return text or None


def parse_timestamp(name: str, value: Any) -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime (naive ones are taken as UTC)."""
    if not isinstance(value, str):
        raise ValidationError(
            f"{name} must be an ISO-8601 string", code="invalid_timestamp", details={"field": name}
        )
    try:
        # Python 3.11 reads "Z" and most ISO-8601 shapes; lower-case "z" and padding need help
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    try:
        if moment is None:
            text = value.strip()
            if text[-1:] in ("z", "Z"):
                text = text[:-1] + "+00:00"
            moment = datetime.fromisoformat(text)
    except ValueError as exc:
        # the value is not echoed: whatever a client put here (an e-mail, say) is not ours to
        # repeat into an answer, a log line or the dead letters
        raise ValidationError(
            f"{name} is not an ISO-8601 timestamp (expected e.g. 2024-05-01T12:00:00.000Z)",
            code="invalid_timestamp",
            details={"field": name},
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return moment


def partition_key(event: dict[str, Any]) -> str:
    """The log's ordering key: the device's anonymousId when known, else the userId."""
    return str(event.get("anonymousId") or event.get("userId") or "")


def event_kind(route_type: str | None, sent_type: Any) -> str:
    """The event's type: the route's (``/v1/track``) or the one it sent, short forms expanded."""
    kind = route_type or sent_type
    if isinstance(kind, str):
        kind = SHORT_TYPES.get(kind, kind)
    # a list or object is unhashable, so the membership test alone would raise TypeError
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ValidationError(
            f"type must be one of {sorted(EVENT_TYPES)}",
            code="invalid_type",
            details={"field": "type"},
        )
    return kind


def identity_ids(
    kind: str, user_raw: Any, anonymous_raw: Any, event_name: Any, previous_raw: Any, group_raw: Any
) -> tuple[str | None, str | None, Any, Any]:
    """Check the ids an event of ``kind`` needs: ``(userId, anonymousId, previousId,
    groupId)``, cleaned where the kind requires them and left as sent otherwise."""
    user_id = identifier_value("userId", user_raw)
    anonymous_id = identifier_value("anonymousId", anonymous_raw)
    if user_id is None and anonymous_id is None:
        raise ValidationError("an event needs a userId or an anonymousId", code="missing_identity")
    if kind == "track":
        if not isinstance(event_name, str) or not event_name.strip():
            raise ValidationError("a track event needs an event name", code="missing_event_name")
    elif kind == "alias":
        previous_raw = identifier_value("previousId", previous_raw)
        if previous_raw is None:
            raise ValidationError("an alias event needs a previousId", code="missing_previous_id")
    elif kind == "group":
        group_raw = identifier_value("groupId", group_raw)
        if group_raw is None:
            raise ValidationError("a group event needs a groupId", code="missing_group_id")
    return user_id, anonymous_id, previous_raw, group_raw


class Normalizer:
    """Turns what a client sent into the event the log stores."""

    def __init__(
        self,
        hasher: PiiHasher,
        *,
        max_event_bytes: int = 32 * 1024,
        future_tolerance_s: float = 24 * 3600.0,
    ) -> None:
        self._hasher = hasher
        self.max_event_bytes = max_event_bytes
        self._future_tolerance = timedelta(seconds=future_tolerance_s)

    @property
    def future_tolerance(self) -> timedelta:
        """How far past ``receivedAt`` an event's time may lie before it is flagged."""
        return self._future_tolerance

    def normalize(
        self,
        raw: Any,
        *,
        received_at: datetime,
        source_id: str,
        event_type: str | None = None,
        defaults: dict[str, Any] | None = None,
        received_at_text: str | None = None,
    ) -> dict[str, Any]:
        """Validate ``raw`` and return the normalised event.

        ``event_type`` comes from the route (``/v1/track``); for batches it is read from the
        event's ``type``. ``defaults`` carries batch-level ``context``, ``integrations`` and
        ``sentAt``, which the event's own fields override. ``received_at_text`` is
        ``received_at`` already formatted (a batch formats it once).
        """
        if not isinstance(raw, dict):
            raise ValidationError("an event must be a JSON object", code="invalid_event")
        event: dict[str, Any] = dict(raw)
        event.pop("writeKey", None)
        event.pop("flags", None)  # flags are ours to set, never the client's

        kind = event_kind(event_type, event.get("type"))
        event["type"] = kind

        if defaults:
            for name in ("context", "integrations"):
                shared = defaults.get(name)
                if isinstance(shared, dict):
                    own = event.get(name)
                    event[name] = {**shared, **own} if isinstance(own, dict) else dict(shared)
            if "sentAt" not in event and "sentAt" in defaults:
                event["sentAt"] = defaults["sentAt"]

        for name in _OBJECT_FIELDS:
            value = event.get(name)
            if value is not None and not isinstance(value, dict):
                raise ValidationError(
                    f"{name} must be a JSON object", code="invalid_field", details={"field": name}
                )

        user_id, anonymous_id, previous_id, group_id = identity_ids(
            kind,
            event.get("userId"),
            event.get("anonymousId"),
            event.get("event"),
            event.get("previousId"),
            event.get("groupId"),
        )
        event["userId"] = user_id
        event["anonymousId"] = anonymous_id
        if user_id is None:
            del event["userId"]
        if anonymous_id is None:
            del event["anonymousId"]
        if kind == "alias":
            event["previousId"] = previous_id
        elif kind == "group":
            event["groupId"] = group_id

        message_id = identifier_value("messageId", event.get("messageId"))
        event["messageId"] = message_id or f"personify-{uuid.uuid4()}"

        received_text = received_at_text or format_timestamp(received_at)
        self._correct_clock(event, received_at, received_text)
        event["receivedAt"] = received_text
        event["sourceId"] = source_id
        self._hasher.apply(event)
        return event

    def _correct_clock(
        self, event: dict[str, Any], received_at: datetime, received_text: str
    ) -> None:
        original, sent, timestamp, is_future = self.corrected_times(
            event.get("originalTimestamp"),
            event.get("timestamp"),
            event.get("sentAt"),
            received_at,
            received_text,
        )
        if original is not None:
            event["originalTimestamp"] = original
        if sent is not None:
            event["sentAt"] = sent
        event["timestamp"] = timestamp
        if is_future:
            event["flags"] = ["future_timestamp"]

    def corrected_times(
        self,
        original_raw: Any,
        timestamp_raw: Any,
        sent_raw: Any,
        received_at: datetime,
        received_text: str,
    ) -> tuple[str | None, str | None, str, bool]:
        """Validate an event's clock fields and correct its clock: ``(originalTimestamp,
        sentAt, timestamp, is_future)``, where None means "leave the field as it is".

        The client's own time is ``originalTimestamp`` when sent, else ``timestamp``; it
        becomes ``originalTimestamp``. When ``sentAt`` is known too, the client's clock offset
        is the same at send and at event time: ``timestamp = receivedAt - (sentAt - client)``.
        """
        client_field = "originalTimestamp" if original_raw is not None else "timestamp"
        client_raw = original_raw if original_raw is not None else timestamp_raw
        client_time = parse_timestamp(client_field, client_raw) if client_raw is not None else None
        sent_at = parse_timestamp("sentAt", sent_raw) if sent_raw is not None else None
        if original_raw is not None and timestamp_raw is not None:
            parse_timestamp("timestamp", timestamp_raw)  # still must be valid
        original: str | None = None
        sent: str | None = None
        try:
            if client_time is not None:
                original = (
                    client_raw if has_timestamp_shape(client_raw) else format_timestamp(client_time)
                )
            if sent_at is not None:
                sent = sent_raw if has_timestamp_shape(sent_raw) else format_timestamp(sent_at)
            if client_time is not None and sent_at is not None:
                moment = received_at - (sent_at - client_time)
                timestamp = format_timestamp(moment)
            elif original is not None and client_time is not None:
                moment = client_time
                timestamp = original
            else:
                moment = received_at
                timestamp = received_text
        except (OverflowError, ValueError) as exc:
            raise ValidationError("timestamps are out of range", code="invalid_timestamp") from exc
        return original, sent, timestamp, moment - received_at > self._future_tolerance

    def check_size(self, payload: bytes) -> None:
        """Reject an encoded event over the per-event limit."""
        if len(payload) > self.max_event_bytes:
            raise PayloadTooLarge(
                f"the event is {len(payload)} bytes; the limit is {self.max_event_bytes}",
                code="event_too_large",
                details={"bytes": len(payload), "limit": self.max_event_bytes},
            )
