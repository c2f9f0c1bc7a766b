"""Differential fuzzing: the compiled common case and the Python path store the same records.

Two collectors, one with the compiled path and one without, each over its own SQLite event
log, take the same request bodies through the routes' own decoding, with the same frozen
clock. Whatever the bodies hold (invalid UTF-8, lone surrogates, a ``\\u`` escape at every
position of every key and string, nesting past the limit, numbers past every range, every
field of the wrong type), both answer alike, dead-letter alike and store the same events (the
same JSON objects, their keys in either order; ``_stored``).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.clock import FrozenClock, format_timestamp
from personify.errors import ValidationError
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.decoding import MAX_DEPTH, decode_batch_events
from personify.events.normalize import Normalizer
from personify.ingest.collector import Collector, IngestOutcome
from personify.ingest.routes import _BATCH_LEVELS, _EVENT_LEVEL_CODES, _decode_shaped
from personify.ingest.sources import Source
from personify.ingest.wire import (
    NATIVE_AVAILABLE,
    WireBatch,
    decode_wire_batch,
    decode_wire_event,
)
from personify.store.database import open_database
from personify.store.failed_events import FailedEventRepository
from tests.conftest import make_settings, service_missing
from tests.ingest.test_wire import DEFAULT_HASHER

if not NATIVE_AVAILABLE:
    service_missing("the C ingest path was not built (no C compiler when installing?)", module=True)

BODIES_PER_RUN = 20_000
NOW = datetime(2026, 11, 27, 9, 0, 1, 250999, tzinfo=UTC)
SOURCE = Source("src_1", "web", "wk", NOW, None)
ROUTE_KINDS = (None, "track", "identify", "page", "screen", "group", "alias")
# the Python path names an event sent without a messageId with a random one
_MADE_UP_ID = re.compile(rb"personify-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Bytes(bytes):
    """Bytes written as they are inside a JSON string (invalid UTF-8 among them)."""


class Number(bytes):
    """A JSON number written as it is (``1e400``, ``-0``, ``1E+2``)."""


def _string(text: str, escape_at: int | None) -> bytes:
    out = bytearray(b'"')
    for index, char in enumerate(text):
        code = ord(char)
        if char in '"\\' or code < 0x20 or 0xD800 <= code < 0xE000 or index == escape_at:
            if code > 0xFFFF:  # a pair of surrogates
                code -= 0x10000
                out += b"\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))
            else:
                out += b"\\u%04x" % code
        else:
            out += char.encode()
    out += b'"'
    return bytes(out)


def dump(value: Any, escape_at: int | None) -> bytes:
    """``value`` as JSON, the character at ``escape_at`` of every key and string written as a
    ``\\u`` escape (and every character JSON must escape, lone surrogates included)."""
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if type(value) is Number:
        return bytes(value)
    if type(value) is Bytes:
        return b'"' + bytes(value) + b'"'
    if type(value) is int or type(value) is float:
        return msgspec.json.encode(value)
    if type(value) is str:
        return _string(value, escape_at)
    if type(value) is list:
        return b"[" + b",".join(dump(item, escape_at) for item in value) + b"]"
    items = (_string(key, escape_at) + b":" + dump(item, escape_at) for key, item in value.items())
    return b"{" + b",".join(items) + b"}"


# -- what a body may hold --------------------------------------------------------------------

_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=10)
_any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=10)
_texts = st.one_of(
    _ascii, _ascii, _ascii, _any_text, st.sampled_from(["", " ", " u ", "caf\u00e9"])
)
_invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b", b"\xe2\x82"]
).map(Bytes)
_numbers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [b"1e400", b"-1e400", b"-0", b"1E+2", b"0.0000001", b"9" * 4300, b"9" * 4301, b"1" * 5000]
    ).map(Number),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _texts, _invalid_utf8)
# key names a PII path may be spelt with, among others
_keys = st.one_of(
    _texts,
    st.sampled_from(["email", "E-Mail", "phone", "Phone_Number", "traits", "plan", "name"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)


def _nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = {"k": leaf} if level % 2 else [leaf]
    return leaf


_deep = st.builds(_nested, st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4), _scalars)
_objects = st.one_of(
    st.dictionaries(_keys, _json, max_size=4),
    st.dictionaries(_keys, _json, max_size=4),
    st.fixed_dictionaries({"traits": st.dictionaries(_keys, _json, max_size=3)}),
    st.builds(lambda inner: {"deep": inner}, _deep),
    _json,
)
_canonical = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(format_timestamp)
_times = st.one_of(
    _canonical,
    _canonical,
    st.sampled_from(["2026-11-27T09:00:00Z", "2026-02-30T00:00:00.000Z", "2026-11-27", "x"]),
    _json,
)
_wrong = st.one_of(_json, _deep)
_ids = st.one_of(_texts, _texts, _texts, _wrong)
_kinds = st.one_of(
    st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "t", "g", "x"]),
    _wrong,
)

# each field: mostly the right kind of value, now and then anything at all
_fields = {
    "type": _kinds,
    "event": _ids,
    "name": _ids,
    "category": _ids,
    "userId": _ids,
    "anonymousId": _ids,
    "previousId": _ids,
    "groupId": _ids,
    "timestamp": _times,
    "originalTimestamp": _times,
    "sentAt": _times,
    "properties": _objects,
    "traits": _objects,
    "context": _objects,
    "integrations": _objects,
    "channel": _ids,
    "version": st.one_of(_numbers, _ids),
    "writeKey": _ids,
    "receivedAt": _times,
    "sourceId": _ids,
    "flags": _wrong,
    "extra": _wrong,  # not a field of the common shape: the dict path takes the event
}
_common = st.fixed_dictionaries(
    {"type": _kinds, "messageId": st.one_of(_ascii, _ascii, _texts, _wrong)},
    optional={name: values for name, values in _fields.items() if name != "type"},
)

# the common case a client library sends, so that the compiled path builds most of these;
# then now and then one field of it changed to anything at all
_clean = st.text("abcXYZ019-_.:/@", min_size=1, max_size=8)
_safe_objects = st.dictionaries(
    st.text("abcdefxyz_", min_size=1, max_size=6), _scalars | st.lists(_scalars), max_size=3
)
_plain = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "identify", "page", "screen", "t", "i", "p", "s"]),
        "event": _clean,
        "messageId": _clean,
        "userId": _clean,
    },
    optional={
        "anonymousId": _clean,
        "name": _clean,
        "timestamp": _canonical,
        "originalTimestamp": _canonical,
        "sentAt": _canonical,
        "properties": _safe_objects,
        "traits": _safe_objects,
        "context": st.fixed_dictionaries({"library": st.just({"name": "x", "version": "1"})}),
        "integrations": st.just({}),
        "channel": _clean,
        "version": st.integers(-(2**70), 2**70) | _clean,
    },
)
_changed = st.builds(
    lambda event, change: event | dict([change]),
    _plain,
    st.sampled_from(sorted(_fields)).flatmap(lambda name: st.tuples(st.just(name), _fields[name])),
)
_events = st.one_of(_plain, _plain, _changed, _changed, _common, _wrong)


def _with_message_id(event: Any, number: int) -> Any:
    """``event`` with a messageId of its own, so that no body is a duplicate of another: the
    records of every body are compared, not only those of the first."""
    if type(event) is dict and type(event.get("messageId")) is str:
        return event | {"messageId": f"{event['messageId']}~{number}"}
    return event


def _bodies(
    events: list[Any], envelope: dict[str, Any], kinds: list[Any]
) -> list[tuple[Any, bytes]]:
    """Every event on its own and all of them in one batch, each written with no forced
    escape and with one at each position of its keys and strings (0-11)."""
    bodies: list[tuple[Any, bytes]] = []
    for escape_at in (None, *range(12)):
        batch = []
        for index, event in enumerate(events):
            event = _with_message_id(event, len(bodies))
            bodies.append((kinds[index % len(kinds)], dump(event, escape_at)))
            batch.append(_with_message_id(event, len(bodies)))
        bodies.append(("batch", dump(envelope | {"batch": batch}, escape_at)))
    return bodies


# -- the routes' way in ----------------------------------------------------------------------


async def _single(collector: Collector, body: bytes, kind: str | None) -> IngestOutcome | None:
    """What ``/v1/track`` and its kind do: None when the compiled path took it."""
    raw = _decode_shaped(body, decode_wire_event, MAX_DEPTH)
    record = collector.common_record(SOURCE, raw, kind)
    if record is not None:
        await collector.append_one(record)
        return None
    return await collector.collect(
        SOURCE,
        [raw],
        event_type=kind,
        check_pii=collector.may_carry_pii(body),
        compiled=False,
    )


async def _batch(collector: Collector, body: bytes) -> IngestOutcome:
    """What ``/v1/batch`` does."""
    try:
        raw = _decode_shaped(body, decode_wire_batch, MAX_DEPTH + _BATCH_LEVELS)
    except ValidationError as error:
        if error.code not in _EVENT_LEVEL_CODES:
            raise
        envelope, events = decode_batch_events(body)
        return await collector.collect(SOURCE, events, defaults=_defaults(envelope), compiled=False)
    if isinstance(raw, WireBatch):
        return await collector.collect(
            SOURCE,
            raw.batch,
            defaults=None if raw.sentAt is msgspec.UNSET else {"sentAt": raw.sentAt},
            check_pii=collector.may_carry_pii(body),
        )
    if not isinstance(raw, dict) or not isinstance(raw.get("batch"), list):
        raise ValidationError("not a batch", code="invalid_batch")
    return await collector.collect(SOURCE, raw["batch"], defaults=_defaults(raw))


def _defaults(envelope: dict[str, Any]) -> dict[str, Any]:
    return {k: envelope[k] for k in ("context", "integrations", "sentAt") if k in envelope}


async def _answer(collector: Collector, kind: Any, body: bytes) -> tuple[Any, bool]:
    """What the request's answer and dead letters depend on, and whether the compiled path
    built the record of a single event. A single event is answered alike whether it was
    stored or a duplicate; the stored records tell them apart."""
    try:
        if kind == "batch":
            outcome = await _batch(collector, body)
        else:
            outcome = await _single(collector, body, kind)
    except ValidationError as error:
        return ("refused", error.code, error.details), False
    if outcome is None:
        return _ACCEPTED, True
    letters = [
        (letter.code, letter.reason, msgspec.json.encode(letter.payload), letter.message_id)
        for letter in outcome.rejected
    ]
    if kind != "batch" and not letters:
        return _ACCEPTED, False
    return ("accepted", outcome.accepted, outcome.duplicates, letters), False


_ACCEPTED = ("accepted",)


def _stored(entries: list[Any]) -> list[tuple[str, bytes]]:
    """Each record's partition key and its JSON with the keys sorted (numbers and strings as
    written). The common-shape paths write an event's fields in the shape's order and the
    general path in the order they were sent; and the compiled and the Python checks for a
    PII path are not equally cautious (an empty ``context.traits`` sends an event to the
    general path in the compiled check only), so one event may take the common-shape path with
    one collector and the general path with the other: the same JSON object, its keys in
    another order."""
    return [
        (
            entry.key,
            msgspec.json.encode(
                msgspec.json.decode(_MADE_UP_ID.sub(b"personify-<made up>", entry.payload)),
                order="sorted",
            ),
        )
        for entry in entries
    ]


async def _differences(
    folder: Path, failed: FailedEventRepository, bodies: list[tuple[Any, bytes]]
) -> int:
    """Compare both paths on ``bodies``; returns how many single events the compiled path
    built itself."""
    normalizer = Normalizer(DEFAULT_HASHER, max_event_bytes=4096, future_tolerance_s=3600.0)
    logs = [SQLiteEventLog(folder / f"{name}.db", durability="off") for name in ("c", "py")]
    for log in logs:
        await log.start()
    try:
        native, python = (
            Collector(log, normalizer, DEFAULT_HASHER, failed, clock=FrozenClock(NOW), native=on)
            for log, on in zip(logs, (True, False), strict=True)
        )
        assert native._wire.native and not python._wire.native
        built = 0
        for kind, body in bodies:
            expected, _ = await _answer(python, kind, body)
            answer, compiled = await _answer(native, kind, body)
            assert answer == expected, body
            built += compiled
        stored_native, stored_python = [_stored(await log.tail(10**6)) for log in logs]
        assert stored_native == stored_python
        return built
    finally:
        for log in logs:
            await log.close()


def test_the_compiled_and_the_python_path_store_the_same_records(tmp_path: Path) -> None:
    db = open_database(make_settings(tmp_path / "data"))
    failed = FailedEventRepository(db)
    sent = built = 0

    @settings(
        max_examples=BODIES_PER_RUN // 130 + 10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        st.lists(_events, min_size=9, max_size=9),
        st.fixed_dictionaries({}, optional={"sentAt": _times, "context": _objects, "x": _wrong}),
        st.lists(st.sampled_from(ROUTE_KINDS), min_size=1, max_size=3),
    )
    def run(events: list[Any], envelope: dict[str, Any], kinds: list[Any]) -> None:
        nonlocal sent, built
        bodies = _bodies(events, envelope, kinds)
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            built += asyncio.run(_differences(Path(folder), failed, bodies))
        sent += len(bodies)

    try:
        run()
    finally:
        db.dispose()
    assert sent >= BODIES_PER_RUN
    # the common case is common enough here for the compiled path to be held to much
    assert built >= sent // 10
