"""The lake's table layout, and the conversion of normalised events to Arrow rows and back.

Every event becomes one row: a stable set of columns that never changes type, the event's
``properties``, ``traits`` and ``context`` kept whole as JSON strings, and the top-level
scalar properties *promoted* to their own ``prop_<name>`` columns so SQL can reach them
without JSON functions. The JSON columns are the truth; promoted columns are a typed
convenience: a value that does not fit the column's established type becomes NULL there
(it is still in ``properties``), so a new or oddly typed property evolves the schema
instead of failing the write.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa

from personify.clock import format_timestamp

TIMESTAMP = pa.timestamp("us", tz="UTC")
PARTITION_COLUMN = "event_date"
PROMOTED_PREFIX = "prop_"

# (column, event field) for the string columns copied as they are
_STRING_FIELDS: tuple[tuple[str, str], ...] = (
    ("message_id", "messageId"),
    ("type", "type"),
    ("event", "event"),
    ("name", "name"),
    ("user_id", "userId"),
    ("anonymous_id", "anonymousId"),
    ("previous_id", "previousId"),
    ("group_id", "groupId"),
    ("source_id", "sourceId"),
)
_TIME_FIELDS: tuple[tuple[str, str], ...] = (
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
    ("sent_at", "sentAt"),
    ("received_at", "receivedAt"),
)
_JSON_FIELDS: tuple[tuple[str, str], ...] = (
    ("properties", "properties"),
    ("traits", "traits"),
    ("context", "context"),
)
_KNOWN_FIELDS = frozenset(field for _, field in (*_STRING_FIELDS, *_TIME_FIELDS, *_JSON_FIELDS))

STABLE_SCHEMA = pa.schema(
    [
        pa.field("message_id", pa.string()),
        pa.field("type", pa.string()),
        pa.field("event", pa.string()),
        pa.field("name", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("previous_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("timestamp", TIMESTAMP),
        pa.field("original_timestamp", TIMESTAMP),
        pa.field("sent_at", TIMESTAMP),
        pa.field("received_at", TIMESTAMP),
        pa.field(PARTITION_COLUMN, pa.date32()),
        pa.field("properties", pa.string()),
        pa.field("traits", pa.string()),
        pa.field("context", pa.string()),
        # every other top-level field (integrations, flags, category, ...), so no data is lost
        pa.field("extra", pa.string()),
        pa.field("log_partition", pa.int32()),
        pa.field("log_offset", pa.string()),
        # when the event log accepted the record: pipeline health, not business time
        pa.field("appended_at", TIMESTAMP),
    ]
)
STABLE_COLUMNS = tuple(STABLE_SCHEMA.names)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_MAX_COLUMN_CHARS = 64


class InvalidLakeEvent(ValueError):
    """A log payload that cannot become a lake row (not JSON, no messageId, bad timestamp)."""


@functools.lru_cache(maxsize=4096)
def promoted_column(key: str) -> str | None:
    """The column a top-level property is promoted to (``Order ID`` -> ``prop_order_id``)."""
    name = _NOT_NAME.sub("_", key.lower()).strip("_")[:_MAX_COLUMN_CHARS]
    return PROMOTED_PREFIX + name if name else None


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return _encode(value).decode()


def _infer_type(values: Iterable[Any]) -> pa.DataType | None:
    kinds: set[str] = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool):
            kinds.add("bool")
        elif isinstance(value, int | float):
            kinds.add("number")
        elif isinstance(value, str):
            kinds.add("string")
    if not kinds:
        return None
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"number"}:
        # every number is a double, so 3 and 3.5 in two batches never clash
        return pa.float64()
    return pa.string()


def _coerce(value: Any, target: pa.DataType) -> Any:
    if value is None or isinstance(value, dict | list):
        return None
    if pa.types.is_floating(target):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            return float(value)
        except (ValueError, OverflowError):
            # JSON integers have no bound (msgspec decodes up to 4,300 digits) and a double
            # ends near 1.8e308: such a number is NULL here and whole in ``properties``
            return None
    if pa.types.is_boolean(target):
        return value if isinstance(value, bool) else None
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        if isinstance(value, str):
            return value
        return _encode(value).decode()
    return None


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The normalised event a log payload holds; raises ``InvalidLakeEvent``."""
    try:
        event = _decode(payload)
    except msgspec.DecodeError as exc:
        raise InvalidLakeEvent(f"the payload is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidLakeEvent("the payload is not a JSON object")
    if not isinstance(event.get("messageId"), str) or not event["messageId"]:
        raise InvalidLakeEvent("the event has no messageId")
    if not isinstance(event.get("timestamp"), str):
        raise InvalidLakeEvent("the event has no timestamp")
    return event


def _timestamps(values: list[Any]) -> pa.Array:
    strings = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    return strings.cast(TIMESTAMP)


def check_timestamps(event: dict[str, Any]) -> None:
    """Raise ``InvalidLakeEvent`` when one of the event's timestamps does not parse."""
    for _, field in _TIME_FIELDS:
        value = event.get(field)
        if value is None:
            continue
        try:
            pa.array([value], pa.string()).cast(TIMESTAMP)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidLakeEvent(f"{field} is not an ISO-8601 timestamp: {value!r}") from exc


def timestamps_parse(events: Sequence[dict[str, Any]]) -> bool:
    """Whether every timestamp of every event parses (one vectorised cast per field)."""
    try:
        for _, field in _TIME_FIELDS:
            _timestamps([e.get(field) for e in events])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def events_to_table(
    events: Sequence[dict[str, Any]],
    *,
    partitions: Sequence[int],
    offsets: Sequence[str],
    appended_at: Sequence[float] | None = None,
    existing: pa.Schema | None = None,
    max_promoted: int = 200,
) -> pa.Table:
    """Arrow rows for ``events`` (already checked by ``decode_payload``/``check_timestamps``).

    ``partitions``, ``offsets`` and ``appended_at`` (epoch seconds) say where each event was
    in the log. ``existing`` is the table's current schema: a promoted column keeps the type it has there,
    and no new promoted column is added once ``max_promoted`` exist.
    """
    columns: dict[str, pa.Array] = {}
    for column, field in _STRING_FIELDS:
        columns[column] = pa.array([_string_or_none(e.get(field)) for e in events], pa.string())
    for column, field in _TIME_FIELDS:
        columns[column] = _timestamps([e.get(field) for e in events])
    columns[PARTITION_COLUMN] = columns["timestamp"].cast(pa.date32())
    for column, field in _JSON_FIELDS:
        columns[column] = pa.array([_json_or_none(e.get(field)) for e in events], pa.string())
    columns["extra"] = pa.array(
        [
            _json_or_none({k: v for k, v in e.items() if k not in _KNOWN_FIELDS} or None)
            for e in events
        ],
        pa.string(),
    )
    columns["log_partition"] = pa.array(partitions, pa.int32())
    columns["log_offset"] = pa.array(offsets, pa.string())
    columns["appended_at"] = (
        pa.array([round(t * 1_000_000) for t in appended_at], pa.int64()).cast(TIMESTAMP)
        if appended_at is not None
        else pa.nulls(len(events), TIMESTAMP)
    )
    table = pa.table(columns, schema=STABLE_SCHEMA)
    for name, array in _promoted_columns(events, existing, max_promoted).items():
        table = table.append_column(pa.field(name, array.type), array)
    return table


def _string_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _promoted_columns(
    events: Sequence[dict[str, Any]], existing: pa.Schema | None, max_promoted: int
) -> dict[str, pa.Array]:
    values: dict[str, list[Any]] = {}
    count = len(events)
    for index, event in enumerate(events):
        properties = event.get("properties")
        if not isinstance(properties, dict):
            continue
        for key in sorted(properties):
            column = promoted_column(key) if isinstance(key, str) else None
            if column is None:
                continue
            slot = values.get(column)
            if slot is None:
                slot = values[column] = [None] * count
            if slot[index] is None:
                # two keys that name the same column: the first in sorted order wins
                slot[index] = properties[key]
    known = {
        f.name: f.type for f in (existing or pa.schema([])) if f.name.startswith(PROMOTED_PREFIX)
    }
    room = max(0, max_promoted - len(known))
    result: dict[str, pa.Array] = {}
    for column in sorted(values):
        target = known.get(column)
        if target is None:
            if room == 0:
                continue
            target = _infer_type(values[column])
            if target is None:
                continue
            room -= 1
        result[column] = pa.array([_coerce(v, target) for v in values[column]], target)
    return result


def _format_time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return format_timestamp(moment)
    return str(value)


def row_to_event(row: dict[str, Any]) -> dict[str, Any]:
    """The normalised event a lake row came from (the inverse of ``events_to_table``)."""
    event: dict[str, Any] = {}
    extra = row.get("extra")
    if extra:
        event.update(_decode(extra))
    for column, field in _STRING_FIELDS:
        value = row.get(column)
        if value is not None:
            event[field] = value
    for column, field in _TIME_FIELDS:
        value = _format_time(row.get(column))
        if value is not None:
            event[field] = value
    for column, field in _JSON_FIELDS:
        value = row.get(column)
        if value is not None:
            event[field] = _decode(value)
    return event
