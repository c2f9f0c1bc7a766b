"""The wire path gives the very event (or the very error) the general dict path gives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.clock import format_timestamp
from personify.errors import ValidationError
from personify.events.hashing import PII_KEYS, PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.wire import (
    WireEvent,
    WireNormalizer,
    decode_wire_batch,
    decode_wire_event,
    wire_to_dict,
)
from tests.conftest import make_settings

HASHER = PiiHasher(b"key", ["traits.email", "traits.phone", "context.traits.email"])
NORMALIZER = Normalizer(HASHER)
WIRE = WireNormalizer(NORMALIZER, HASHER.paths, native=False)  # the Python path (and body scan)
RECEIVED = datetime(2026, 11, 27, 9, 0, 1, 250000, tzinfo=UTC)
RECEIVED_TEXT = format_timestamp(RECEIVED)

_ids = st.one_of(
    st.none(),
    st.sampled_from(["user-1", " padded ", "", "   ", "x" * 513, "nul\x00"]),
    st.text(max_size=8),
    st.integers(-5, 5),
)
_times = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-11-27T09:00:00.000Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27 10:00:00+01:00",
            "2026-11-27t09:00:00z",
            "2099-01-01T00:00:00.000Z",
            "0001-01-01T00:00:00.000Z",
            "yesterday",
        ]
    ),
    st.integers(0, 3),
)
_objects = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["a", "email", "phone", "traits"]), st.text(max_size=4)),
    st.just({"traits": {"email": " Ann@X.com "}}),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=3),
)
_fields = {
    "type": st.one_of(st.sampled_from(["track", "t", "page", "alias", "group", "nope"]), _ids),
    "event": st.one_of(st.sampled_from(["Viewed", "  "]), _ids),
    "name": _ids,
    "userId": _ids,
    "anonymousId": _ids,
    "previousId": _ids,
    "groupId": _ids,
    "messageId": _ids,
    "timestamp": _times,
    "originalTimestamp": _times,
    "sentAt": _times,
    "properties": _objects,
    "traits": _objects,
    "context": _objects,
    "integrations": _objects,
    "writeKey": _ids,
    "flags": st.just(["mine"]),
    "receivedAt": _times,
    "sourceId": _ids,
    "extra": st.integers(),
}
_good_times = st.sampled_from(
    ["2026-11-27T09:00:00.000Z", "2026-11-27T09:00:00Z", "2026-11-27 10:00:00+01:00"]
)
_good = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "identify", "alias", "group", "s"]),
        "event": st.sampled_from(["Viewed", "Order Completed"]),
        "userId": st.sampled_from(["user-1", " user-2 "]),
    },
    optional={
        "anonymousId": st.sampled_from(["anon-1", "  "]),
        "previousId": st.sampled_from(["old-1", " old-2"]),
        "groupId": st.sampled_from(["g-1"]),
        "messageId": st.sampled_from(["m-1", " m-2 "]),
        "timestamp": _good_times,
        "originalTimestamp": _good_times,
        "sentAt": _good_times,
        "properties": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
        "context": st.just({"library": {"name": "analytics-python"}}),
        "integrations": st.just({}),
        "writeKey": st.just("wk"),
    },
)
# mostly events a client library would send, each with up to two fields swapped for odd ones
_events = st.one_of(
    st.tuples(_good, st.fixed_dictionaries({}, optional=_fields)).map(
        lambda pair: pair[0] | dict(list(pair[1].items())[:2])
    ),
    st.fixed_dictionaries({}, optional=_fields),
)


def _general(raw: dict[str, Any], event_type: str | None, sent_at: Any) -> Any:
    defaults = None if sent_at is None else {"sentAt": sent_at}
    try:
        return NORMALIZER.normalize(
            raw,
            received_at=RECEIVED,
            received_at_text=RECEIVED_TEXT,
            source_id="src",
            event_type=event_type,
            defaults=defaults,
        )
    except ValidationError as error:
        return error.code


def _wire(raw: WireEvent, event_type: str | None, sent_at: Any) -> Any:
    try:
        event = WIRE.normalize(
            raw,
            received_at=RECEIVED,
            received_at_text=RECEIVED_TEXT,
            source_id="src",
            event_type=event_type,
            sent_at_default=msgspec.UNSET if sent_at is None else sent_at,
        )
    except ValidationError as error:
        return error.code
    return wire_to_dict(event)


def _same_generated_id(general: Any, wire: Any) -> None:
    generated = isinstance(general, dict) and str(general.get("messageId")).startswith("personify-")
    if generated and isinstance(wire, dict):
        assert str(wire.get("messageId", "")).startswith("personify-")
        wire["messageId"] = general["messageId"]


@settings(max_examples=400, deadline=None)
@given(
    _events,
    st.sampled_from([None, "track", "identify", "a"]),
    st.sampled_from([None, "2026-11-27T09:00:02.000Z"]),
)
def test_the_wire_path_matches_the_general_path(
    raw: dict[str, Any], event_type: str | None, sent_at: str | None
) -> None:
    body = msgspec.json.encode(raw)
    try:
        wire_event = decode_wire_event(body)
    except msgspec.DecodeError:
        return  # not the common shape: only the general path sees it
    if WIRE.needs_general_path(wire_event):
        return
    general = _general(msgspec.json.decode(body), event_type, sent_at)
    wire = _wire(wire_event, event_type, sent_at)
    _same_generated_id(general, wire)
    assert wire == general
    # the input is left as it was, for the dead-letter table
    assert msgspec.json.encode(wire_event) == msgspec.json.encode(decode_wire_event(body))


def test_a_common_track_event_takes_the_wire_path() -> None:
    body = (
        b'{"type":"track","event":"Viewed","userId":"u1","messageId":"m1",'
        b'"timestamp":"2026-11-27T09:00:00.000Z","properties":{"price":9.5},'
        b'"context":{"library":{"name":"analytics-python"}},"integrations":{}}'
    )
    event = decode_wire_event(body)
    assert not WIRE.needs_general_path(event)
    out = _wire(event, None, "2026-11-27T09:00:01.000Z")
    assert out["properties"] == {"price": 9.5}
    assert out["receivedAt"] == RECEIVED_TEXT and out["sourceId"] == "src"
    assert out["timestamp"] == "2026-11-27T09:00:00.250Z"  # skew-corrected


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"identify","userId":"u1","traits":{"email":"a@b.c"}}',
        b'{"type":"track","event":"e","userId":"u1","context":{"traits":{"email":"a@b.c"}}}',
    ],
)
def test_an_event_that_may_carry_pii_takes_the_general_path(body: bytes) -> None:
    assert WIRE.needs_general_path(decode_wire_event(body))


def test_a_batch_envelope_with_shared_context_is_not_the_common_shape() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_wire_batch(b'{"batch":[],"context":{"ip":"1.2.3.4"}}')
    assert decode_wire_batch(b'{"batch":[],"sentAt":"2026-11-27T09:00:00Z"}').batch == []


@pytest.mark.parametrize(
    ("body", "may"),
    [
        (b'{"type":"track","event":"e","userId":"u","context":{"library":{}}}', False),
        (b'{"type":"identify","userId":"u","traits":{"plan":"pro"}}', False),
        (b'{"type":"identify","userId":"u","traits":{"email":"a@b.c"}}', True),
        (b'{"type":"identify","userId":"u","traits":{"\\u0065mail":"a@b.c"}}', True),
        (b'{"context":{"traits":{}},"properties":{"email":1}}', True),
    ],
)
def test_a_body_without_every_key_of_a_path_cannot_carry_pii(body: bytes, may: bool) -> None:
    assert WIRE.may_carry_pii(body) is may


def test_an_escaped_key_sends_the_event_to_the_general_path() -> None:
    event = decode_wire_event(b'{"type":"identify","userId":"u","traits":{"\\u0065mail":"a"}}')
    assert WIRE.needs_general_path(event)
    assert not WIRE.needs_general_path(
        decode_wire_event(b'{"type":"identify","userId":"u","traits":{"plan":"a"}}')
    )


# -- the PII probe over key names: false positives cost speed, a miss would store PII raw ------

DEFAULT_HASHER = PiiHasher(b"key", make_settings(Path("unused")).pii_paths)
DEFAULT_WIRE = WireNormalizer(Normalizer(DEFAULT_HASHER), DEFAULT_HASHER.paths, native=False)


def spelled(name: str) -> st.SearchStrategy[str]:
    """``name`` with each letter in either case and separators anywhere around its letters."""
    separators = st.sampled_from(["", "", "", "-", "_", ".", " ", "__"])
    letters = st.tuples(*(st.tuples(st.booleans(), separators) for _ in name))
    return st.tuples(separators, letters).map(
        lambda drawn: (
            drawn[0]
            + "".join(
                (c.upper() if up else c) + sep for c, (up, sep) in zip(name, drawn[1], strict=True)
            )
        )
    )


pii_keys = st.sampled_from(sorted(PII_KEYS)).flatmap(spelled)
# keys made of the letters of PII key names, so near misses ("mai", "tele x") come often
near_keys = st.text(alphabet="acefhillmnoprstxAEILMPT-_. ", max_size=12)
trait_objects = st.dictionaries(
    st.one_of(pii_keys, near_keys),
    st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none()),
    max_size=4,
)


def pii_probe_case(
    kind: str, traits: dict[str, Any] | None, context_traits: dict[str, Any] | None
) -> tuple[bytes, bool]:
    """A wire-shaped event body, and whether the dict path finds PII in it to hash."""
    raw: dict[str, Any] = {"type": kind, "userId": "u", "event": "e", "messageId": "m"}
    if traits is not None:
        raw["traits"] = traits
    if context_traits is not None:
        raw["context"] = {"library": {"name": "x"}, "traits": context_traits}
    body = msgspec.json.encode(raw)
    hashed = msgspec.json.decode(body)
    DEFAULT_HASHER.apply(hashed)
    return body, hashed != msgspec.json.decode(body)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["track", "identify", "page", "screen"]),
    st.none() | trait_objects,
    st.none() | trait_objects,
)
def test_the_probe_finds_every_event_the_dict_path_would_hash(
    kind: str, traits: dict[str, Any] | None, context_traits: dict[str, Any] | None
) -> None:
    body, has_pii = pii_probe_case(kind, traits, context_traits)
    if has_pii:
        assert DEFAULT_WIRE.may_carry_pii(body)
        assert DEFAULT_WIRE.needs_general_path(decode_wire_event(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"identify","userId":"u","traits":{"Email":"a@b.c"}}',
        b'{"type":"identify","userId":"u","traits":{"PHONE":"+1 555"}}',
        b'{"type":"identify","userId":"u","traits":{"e-mail":"a@b.c"}}',
        b'{"type":"identify","userId":"u","traits":{"phone_number":"+1 555"}}',
        b'{"type":"identify","userId":"u","traits":{"Mobile":"+1 555"}}',
        b'{"type":"track","event":"e","userId":"u","context":{"traits":{"phone":"+1 555"}}}',
        b'{"type":"page","userId":"u","context":{"Traits":{"EMAIL":"a@b.c"}}}',
        b'{"type":"page","userId":"u","context":{"traits":{"cell_phone":"+1 555"}}}',
    ],
)
def test_pii_under_any_spelling_takes_the_general_path(body: bytes) -> None:
    assert DEFAULT_WIRE.may_carry_pii(body)
    assert DEFAULT_WIRE.needs_general_path(decode_wire_event(body))


def test_a_common_event_without_traits_still_takes_the_wire_path() -> None:
    body = (
        b'{"type":"track","event":"Viewed","userId":"u1","messageId":"m1",'
        b'"properties":{"email_sent":true,"phone":"x"},'
        b'"context":{"library":{"name":"analytics-python"},'
        b'"userAgent":"Mozilla/5.0 (iPhone) Mobile Safari"}}'
    )
    assert not DEFAULT_WIRE.may_carry_pii(body)
    assert not DEFAULT_WIRE.needs_general_path(decode_wire_event(body))
