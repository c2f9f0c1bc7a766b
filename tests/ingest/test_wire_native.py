"""The compiled common case (``_wire_native.c``) builds the very record the Python path builds.

It answers None for whatever is not the common case; then the Python path decides, errors
included. So for every input: None, or byte for byte ``wire_log_record(normalize(...))``.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.clock import epoch_us, format_timestamp
from personify.errors import ValidationError
from personify.eventlog.base import LogRecord
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.collector import wire_log_record
from personify.ingest.wire import (
    NATIVE_AVAILABLE,
    WireEvent,
    WireNormalizer,
    decode_wire_event,
)
from tests.conftest import service_missing
from tests.ingest.test_wire import (
    DEFAULT_HASHER,
    DEFAULT_WIRE,
    _events,
    pii_probe_case,
    trait_objects,
)

if not NATIVE_AVAILABLE:
    service_missing("the C ingest path was not built (no C compiler when installing?)", module=True)

HASHER = PiiHasher(b"key", ["traits.email", "traits.phone", "context.traits.email"])
NORMALIZER = Normalizer(HASHER, max_event_bytes=2048, future_tolerance_s=3600.0)
NATIVE = WireNormalizer(NORMALIZER, HASHER.paths)
PYTHON = WireNormalizer(NORMALIZER, HASHER.paths, native=False)
RECEIVED = datetime(2026, 11, 27, 9, 0, 1, 250999, tzinfo=UTC)


def _python(
    raw: WireEvent, event_type: str | None, sent_at: Any, received: datetime, source: str
) -> LogRecord | str:
    try:
        event = PYTHON.normalize(
            raw,
            received_at=received,
            received_at_text=format_timestamp(received),
            source_id=source,
            event_type=event_type,
            sent_at_default=sent_at,
        )
        return wire_log_record(NORMALIZER, event, source)
    except ValidationError as error:
        return error.code


def _native(
    raw: WireEvent, event_type: str | None, sent_at: Any, received: datetime, source: str
) -> LogRecord | None:
    return NATIVE.native_record(
        raw,
        received_us=epoch_us(received),
        received_at_text=format_timestamp(received),
        source_id=source,
        event_type=event_type,
        sent_at_default=sent_at,
    )


def _check(
    raw: WireEvent,
    event_type: str | None = None,
    sent_at: Any = msgspec.UNSET,
    received: datetime = RECEIVED,
    source: str = "src_1",
) -> LogRecord | None:
    before = msgspec.json.encode(raw)
    native = _native(raw, event_type, sent_at, received, source)
    assert msgspec.json.encode(raw) == before  # the input is left as it was
    if PYTHON.needs_general_path(raw):
        assert native is None  # PII is hashed by the dict path
    if native is not None:
        assert type(native) is LogRecord
        assert native == _python(raw, event_type, sent_at, received, source)
    return native


_clean_ids = st.text(
    string.ascii_letters + string.digits + "-_.:/@ ", min_size=1, max_size=8
).filter(lambda text: text.strip() == text)
# mostly ids a client library sends; now and then any printable ASCII (quotes, backslashes)
_ascii_ids = st.one_of(
    _clean_ids,
    _clean_ids,
    _clean_ids,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=6),
)
_canonical = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(format_timestamp)
_common = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "screen", "identify", "t", "p", "s", "i"]),
        "event": st.one_of(_ascii_ids, _ascii_ids, _ascii_ids, st.just("  ")),
        "messageId": st.one_of(_ascii_ids, _ascii_ids, _ascii_ids, st.just(" m ")),
        "userId": st.one_of(_ascii_ids, _ascii_ids, _ascii_ids, st.none()),
    },
    optional={
        "anonymousId": st.one_of(_ascii_ids, _ascii_ids, _ascii_ids, st.none(), st.just("a\u00e9")),
        "name": st.one_of(_ascii_ids, st.none()),
        "category": _ascii_ids,
        "previousId": st.one_of(_ascii_ids, st.none()),
        "groupId": _ascii_ids,
        "timestamp": st.one_of(
            _canonical, _canonical, st.none(), st.just("2026-02-30T00:00:00.000Z")
        ),
        "originalTimestamp": st.one_of(_canonical, st.none()),
        "sentAt": st.one_of(_canonical, st.none()),
        "properties": st.one_of(st.none(), st.dictionaries(_ascii_ids, st.integers(), max_size=2)),
        "traits": st.sampled_from(
            [{"plan": "pro"}, {"email": "a@b.c"}, {"phone": "+1 555"}, {"plan": "email"}]
        ),
        "context": st.sampled_from(
            [
                {"library": {"name": "x", "version": "1"}, "n": "caf\u00e9"},
                {"traits": {"email": "a@b.c"}},
                {"traits": {"plan": "pro"}},
            ]
        ),
        "integrations": st.one_of(st.just({}), st.just({}), st.just({}), st.just([])),
        "channel": st.one_of(_ascii_ids, st.none()),
        "version": st.one_of(
            st.integers(-1000, 1000), st.integers(-(2**70), 2**70), _ascii_ids, st.none()
        ),
        "writeKey": _ascii_ids,
    },
)


@settings(max_examples=500, deadline=None)
@given(
    _common,
    st.sampled_from([None, "track", "identify", "page"]),
    st.one_of(st.just(msgspec.UNSET), st.none(), _canonical),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
)
def test_the_compiled_path_builds_what_the_python_path_builds(
    raw: dict[str, Any], event_type: str | None, sent_at: Any, received: datetime
) -> None:
    _check(decode_wire_event(msgspec.json.encode(raw)), event_type, sent_at, received)


@settings(max_examples=400, deadline=None)
@given(_events, st.sampled_from([None, "track", "a"]))
def test_odd_events_are_left_to_the_python_path_or_built_alike(
    raw: dict[str, Any], event_type: str | None
) -> None:
    try:
        event = decode_wire_event(msgspec.json.encode(raw))
    except msgspec.DecodeError:
        return
    _check(event, event_type)


TRACK = (
    b'{"type":"track","event":"Viewed","userId":"u1","anonymousId":"a1","messageId":"m1",'
    b'"timestamp":"2026-11-27T09:00:00.000Z","sentAt":"2026-11-27T09:00:01.000Z",'
    b'"properties":{"price":9.5},"context":{"library":{"name":"analytics-python"}},'
    b'"integrations":{}}'
)


def test_a_common_track_event_is_built_natively_with_its_clock_corrected() -> None:
    record = _check(decode_wire_event(TRACK))
    assert record is not None
    event = msgspec.json.decode(record.payload)
    assert event["timestamp"] == "2026-11-27T09:00:00.250Z"  # receivedAt - (sentAt - client)
    assert event["originalTimestamp"] == "2026-11-27T09:00:00.000Z"
    assert event["receivedAt"] == "2026-11-27T09:00:01.250Z"
    assert event["sourceId"] == "src_1"
    assert record.key == "a1" and record.dedupe_key == "src_1:m1"


@pytest.mark.parametrize(
    "change",
    [
        {"userId": "caf\u00e9"},  # not plain ASCII
        {"event": 'say "hi"'},  # needs escaping
        {"timestamp": "2026-11-27T09:00:00Z"},  # not the canonical shape
        {"type": "alias", "previousId": "p"},
        {"type": "group", "groupId": "g"},
        {"messageId": None},  # the Python path makes one up
        {"receivedAt": "2026-01-01T00:00:00.000Z"},
        {"userId": " u1 "},  # trimmed by the Python path
        {"properties": [1]},  # invalid: the Python path raises
    ],
)
def test_what_is_not_the_common_case_is_left_to_the_python_path(change: dict[str, Any]) -> None:
    raw = msgspec.json.decode(TRACK) | change
    assert _check(decode_wire_event(msgspec.json.encode(raw))) is None


def test_an_event_in_the_future_is_flagged() -> None:
    raw = msgspec.json.decode(TRACK) | {"timestamp": "2026-11-27T11:00:01.000Z"}
    raw.pop("sentAt")
    record = _check(decode_wire_event(msgspec.json.encode(raw)))
    assert record is not None
    assert msgspec.json.decode(record.payload)["flags"] == ["future_timestamp"]


def test_an_event_over_the_size_limit_is_left_to_the_python_path() -> None:
    raw = msgspec.json.decode(TRACK) | {"properties": {"blob": "x" * 3000}}
    event = decode_wire_event(msgspec.json.encode(raw))
    assert _check(event) is None
    assert _python(event, None, msgspec.UNSET, RECEIVED, "src_1") == "event_too_large"


def test_a_skew_correction_out_of_range_is_left_to_the_python_path() -> None:
    raw = msgspec.json.decode(TRACK) | {
        "timestamp": "0001-01-01T00:00:00.000Z",
        "sentAt": "9999-12-31T23:59:59.999Z",
    }
    event = decode_wire_event(msgspec.json.encode(raw))
    assert _check(event, received=RECEIVED - timedelta(days=1)) is None
    assert _python(event, None, msgspec.UNSET, RECEIVED, "src_1") == "invalid_timestamp"


def test_the_compiled_path_can_be_switched_off() -> None:
    assert NATIVE.native and not PYTHON.native
    event = decode_wire_event(TRACK)
    assert _native(event, None, msgspec.UNSET, RECEIVED, "src_1") is not None
    assert (
        PYTHON.native_record(
            event, received_us=epoch_us(RECEIVED), received_at_text="t", source_id="src_1"
        )
        is None
    )


@pytest.mark.parametrize(
    "change",
    [
        {"traits": {"email": "Ann@X.com"}},
        {"context": {"traits": {"email": "Ann@X.com"}}},
        {"traits": {"phone": "+1 555 0100"}},
    ],
)
def test_an_event_that_may_carry_pii_is_left_to_the_python_path(change: dict[str, Any]) -> None:
    raw = msgspec.json.decode(TRACK) | change
    assert _check(decode_wire_event(msgspec.json.encode(raw))) is None


def test_an_escaped_key_in_traits_is_left_to_the_python_path() -> None:
    body = TRACK[:-1] + b',"traits":{"\\u0065mail":"Ann@X.com"}}'
    assert _check(decode_wire_event(body)) is None


def test_with_the_compiled_path_the_body_scan_is_skipped() -> None:
    assert NATIVE.may_carry_pii(TRACK) is True  # each event is looked at instead
    assert PYTHON.may_carry_pii(TRACK) is False


@settings(max_examples=200, deadline=None)
@given(st.lists(_common, max_size=6), st.one_of(st.just(msgspec.UNSET), _canonical))
def test_a_list_of_events_is_built_in_one_call_as_one_by_one(
    raws: list[dict[str, Any]], sent_at: Any
) -> None:
    from personify.ingest import _wire_native

    events: list[Any] = [decode_wire_event(msgspec.json.encode(raw)) for raw in raws]
    events.append({"type": "track"})  # not a WireEvent: left to the Python path
    args = (None, epoch_us(RECEIVED), format_timestamp(RECEIVED), "src_1", sent_at, 3600 * 10**6)
    roots = NATIVE.native_pii_roots
    records, fallbacks = _wire_native.wire_records(events, *args, 2048, roots)
    assert records == [_wire_native.wire_record(event, *args, 2048, roots) for event in events]
    assert records[-1] is None
    assert fallbacks == sum(record is None for record in records)
    assert all(type(record) is LogRecord for record in records if record is not None)


@pytest.mark.parametrize("bad", ['"', "\\", "\x00", "\x01", "\x1f", "\x7f", "\u00e9"])
def test_a_character_that_needs_escaping_anywhere_in_a_long_string_is_left_to_python(
    bad: str,
) -> None:
    for position in range(24):  # before, inside and after each eight-byte word
        name = "n" * position + bad + "m" * (23 - position)
        raw = msgspec.json.decode(TRACK) | {"event": name}
        assert _check(decode_wire_event(msgspec.json.encode(raw))) is None, position


def test_every_printable_character_that_needs_no_escaping_is_built_natively() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
    raw = msgspec.json.decode(TRACK) | {"event": printable, "userId": printable.strip()}
    record = _check(decode_wire_event(msgspec.json.encode(raw)))
    assert record is not None
    assert msgspec.json.decode(record.payload)["event"] == printable


# -- the compiled PII probe: key names in any case and with any separators --------------------

DEFAULT_NATIVE = WireNormalizer(Normalizer(DEFAULT_HASHER), DEFAULT_HASHER.paths)


def _native_default(body: bytes) -> LogRecord | None:
    return DEFAULT_NATIVE.native_record(
        decode_wire_event(body),
        received_us=epoch_us(RECEIVED),
        received_at_text=format_timestamp(RECEIVED),
        source_id="src_1",
    )


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["track", "identify", "page", "screen"]),
    st.none() | trait_objects,
    st.none() | trait_objects,
)
def test_the_compiled_probe_leaves_every_event_with_pii_to_python(
    kind: str, traits: dict[str, Any] | None, context_traits: dict[str, Any] | None
) -> None:
    body, has_pii = pii_probe_case(kind, traits, context_traits)
    if has_pii:
        assert _native_default(body) is None
    # whatever the Python probe sends to the dict path, the compiled one sends there too
    if DEFAULT_WIRE.needs_general_path(decode_wire_event(body)):
        assert _native_default(body) is None


@pytest.mark.parametrize(
    "change",
    [
        {"traits": {"Email": "Ann@X.com"}},
        {"traits": {"E-MAIL": "Ann@X.com"}},
        {"traits": {"PHONE": "+1 555 0100"}},
        {"traits": {"phone_number": "+1 555 0100"}},
        {"traits": {"mobile": "+1 555 0100"}},
        {"context": {"traits": {"phone": "+1 555 0100"}}},
        {"context": {"TRAITS": {"Cell Phone": "+1 555 0100"}}},
        {"context": {"traits": {"email_address": "Ann@X.com"}}},
    ],
)
def test_pii_under_any_spelling_is_left_to_the_python_path(change: dict[str, Any]) -> None:
    raw = msgspec.json.decode(TRACK) | change
    assert _native_default(msgspec.json.encode(raw)) is None


def test_the_common_track_event_is_still_built_natively_with_the_default_paths() -> None:
    raw = msgspec.json.decode(TRACK)
    raw["context"]["userAgent"] = "Mozilla/5.0 (iPhone) Mobile Safari"
    raw["traits"] = {"plan": "pro"}
    assert _native_default(msgspec.json.encode(raw)) is not None
