"""Validation and normalisation of Segment-spec events, with a property test over any JSON."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.clock import format_timestamp
from personify.errors import PayloadTooLarge, ValidationError
from personify.events.hashing import HASH_PREFIX, PiiHasher
from personify.events.normalize import (
    EVENT_TYPES,
    Normalizer,
    parse_timestamp,
    partition_key,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HASHER = PiiHasher(b"key", ["traits.email", "traits.phone", "context.traits.email"])
NORMALIZER = Normalizer(HASHER)


def normalize(raw: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("received_at", NOW)
    kwargs.setdefault("source_id", "src")
    return NORMALIZER.normalize(raw, **kwargs)


def rejected(raw: Any, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        normalize(raw, **kwargs)
    return caught.value


# -- the contract, case by case --------------------------------------------------------------


def test_a_minimal_track_event_gets_every_server_field() -> None:
    event = normalize({"type": "track", "userId": "u1", "event": "Clicked"})
    assert event["type"] == "track"
    assert event["messageId"].startswith("personify-")
    assert event["receivedAt"] == "2024-05-01T12:00:00.000Z"
    assert event["timestamp"] == event["receivedAt"]
    assert event["sourceId"] == "src"
    assert "anonymousId" not in event
    assert "flags" not in event


def test_the_route_type_wins_and_short_types_are_expanded() -> None:
    assert normalize({"type": "identify", "userId": "u"}, event_type="page")["type"] == "page"
    assert normalize({"type": "p", "userId": "u"})["type"] == "page"
    assert normalize({"userId": "u", "event": "E"}, event_type="t")["type"] == "track"
    assert rejected({"type": "click", "userId": "u"}).code == "invalid_type"
    assert rejected({"userId": "u"}).code == "invalid_type"


def test_write_key_and_client_flags_are_dropped() -> None:
    event = normalize(
        {"userId": "u", "writeKey": "wk_secret", "flags": ["future_timestamp"]},
        event_type="identify",
    )
    assert "writeKey" not in event
    assert "flags" not in event


def test_identifiers_are_trimmed_and_numbers_become_strings() -> None:
    event = normalize(
        {"userId": 42, "anonymousId": "  a1 ", "messageId": " m1 "}, event_type="page"
    )
    assert event["userId"] == "42"
    assert event["anonymousId"] == "a1"
    assert event["messageId"] == "m1"
    assert rejected({"userId": True}, event_type="page").code == "invalid_field"
    assert rejected({"userId": ["u"]}, event_type="page").code == "invalid_field"


@pytest.mark.parametrize(
    ("raw", "event_type", "code"),
    [
        ({"event": "E"}, "track", "missing_identity"),
        ({"userId": None, "anonymousId": ""}, "page", "missing_identity"),
        ({"userId": "u"}, "track", "missing_event_name"),
        ({"userId": "u", "event": 7}, "track", "missing_event_name"),
        ({"userId": "u"}, "alias", "missing_previous_id"),
        ({"userId": "u", "previousId": " "}, "alias", "missing_previous_id"),
        ({"userId": "u"}, "group", "missing_group_id"),
        ({"userId": "u", "groupId": {"id": 1}}, "group", "invalid_field"),
        ({"userId": "u", "properties": "x"}, "page", "invalid_field"),
        ({"userId": "u", "integrations": []}, "page", "invalid_field"),
        ({"userId": "u", "timestamp": "soon"}, "page", "invalid_timestamp"),
        ({"userId": "u", "timestamp": None, "sentAt": 5}, "page", "invalid_timestamp"),
        ({"userId": "u", "originalTimestamp": "2024-05-01T00:00:00Z", "timestamp": "x"}, "page",
         "invalid_timestamp"),
        ("an event", None, "invalid_event"),
        (None, "track", "invalid_event"),
    ],
)  # fmt: skip
def test_contract_violations_have_their_code(raw: Any, event_type: str | None, code: str) -> None:
    assert rejected(raw, event_type=event_type).code == code


def test_alias_and_group_ids_are_normalised() -> None:
    assert normalize({"userId": "u", "previousId": 7}, event_type="alias")["previousId"] == "7"
    assert normalize({"userId": "u", "groupId": " g "}, event_type="group")["groupId"] == "g"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (" 2024-05-01T10:00:00Z ", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_iso_timestamps_are_read_as_utc(text: str, expected: datetime) -> None:
    assert parse_timestamp("timestamp", text) == expected


def test_a_client_timestamp_without_sent_at_is_kept_in_canonical_form() -> None:
    event = normalize({"userId": "u", "timestamp": "2024-05-01T12:30:00+02:00"}, event_type="page")
    assert event["timestamp"] == "2024-05-01T10:30:00.000Z"
    assert event["originalTimestamp"] == "2024-05-01T10:30:00.000Z"
    assert event["receivedAt"] == "2024-05-01T12:00:00.000Z"


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # the device is 2 h slow and sent the event 30 s after it happened
    device_now = NOW - timedelta(hours=2)
    event = normalize(
        {
            "userId": "u",
            "originalTimestamp": format_timestamp(device_now - timedelta(seconds=30)),
            "sentAt": format_timestamp(device_now),
        },
        event_type="page",
    )
    assert event["timestamp"] == "2024-05-01T11:59:30.000Z"
    assert event["originalTimestamp"] == "2024-05-01T09:59:30.000Z"


def test_batch_defaults_apply_and_the_events_own_fields_win() -> None:
    defaults = {
        "context": {"ip": "1.2.3.4", "locale": "de"},
        "integrations": {"All": False},
        "sentAt": format_timestamp(NOW - timedelta(seconds=10)),
    }
    own = normalize(
        {"userId": "u", "context": {"locale": "fr"}, "sentAt": format_timestamp(NOW)},
        event_type="page",
        defaults=defaults,
    )
    assert own["context"] == {"ip": "1.2.3.4", "locale": "fr"}
    assert own["integrations"] == {"All": False}
    assert own["sentAt"] == "2024-05-01T12:00:00.000Z"
    inherited = normalize({"userId": "u"}, event_type="page", defaults=defaults)
    assert inherited["sentAt"] == defaults["sentAt"]
    assert inherited["context"] is not defaults["context"]


def test_future_events_beyond_the_tolerance_are_flagged() -> None:
    normalizer = Normalizer(HASHER, future_tolerance_s=3600.0)

    def flags(offset: timedelta) -> Any:
        raw = {"userId": "u", "timestamp": format_timestamp(NOW + offset)}
        event = normalizer.normalize(raw, received_at=NOW, source_id="s", event_type="page")
        return event.get("flags")

    assert flags(timedelta(minutes=59)) is None
    assert flags(timedelta(minutes=61)) == ["future_timestamp"]
    assert flags(-timedelta(days=365)) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp": "0001-01-01T00:00:00+23:59"},
        {"timestamp": "9999-12-31T23:59:59-23:59"},
        {"originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"},
        {"originalTimestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"},
    ],
)
def test_out_of_range_timestamps_are_rejected_not_crashed(fields: dict[str, str]) -> None:
    assert rejected({"userId": "u", **fields}, event_type="page").code == "invalid_timestamp"


def test_pii_is_hashed_and_consent_kept() -> None:
    consent = {"categoryPreferences": {"Advertising": False, "Personalization": True}}
    raw = {
        "userId": "u",
        "traits": {"email": " Ann@X.com", "phone": "+49 (30) 1234"},
        "context": {"traits": {"email": "ANN@x.com"}, "consent": consent},
    }
    event = normalize(raw, event_type="identify")
    assert event["traits"]["email"] == HASHER.hash_value("email", "ann@x.com")
    assert event["traits"]["phone"] == HASHER.hash_value("phone", "49301234")
    assert event["context"]["traits"]["email"] == event["traits"]["email"]
    assert event["context"]["consent"] == consent


def test_the_input_is_never_modified() -> None:
    raw = {
        "type": "identify",
        "userId": " u ",
        "writeKey": "wk",
        "flags": ["x"],
        "traits": {"email": "ann@x.com"},
        "context": {"traits": {"email": "ann@x.com"}},
    }
    before = copy.deepcopy(raw)
    normalize(raw, defaults={"context": {"ip": "1.1.1.1"}})
    assert raw == before


def test_check_size_rejects_an_event_over_the_limit() -> None:
    normalizer = Normalizer(HASHER, max_event_bytes=100)
    normalizer.check_size(b"x" * 100)
    with pytest.raises(PayloadTooLarge) as caught:
        normalizer.check_size(b"x" * 101)
    assert caught.value.code == "event_too_large"
    assert caught.value.details == {"bytes": 101, "limit": 100}


def test_partition_key_prefers_the_anonymous_id() -> None:
    assert partition_key({"anonymousId": "a", "userId": "u"}) == "a"
    assert partition_key({"userId": "u"}) == "u"
    assert partition_key({}) == ""


# -- property: any JSON is accepted or rejected with a code, never anything else -------------

# msgspec never decodes a lone surrogate, so the strings a route can see exclude them
json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | json_text
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=20,
)
offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))
timestamps = st.one_of(
    st.datetimes(timezones=st.just(UTC) | offsets.map(timezone)).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.sampled_from(
        [
            "",
            "Z",
            "2024-05-01",
            "2024-05-01T10:00:00z",
            "2024-02-30T00:00:00Z",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2024-05-01T10:00:00.123456789Z",
            "2024-W18-3",
            "20240501T100000Z",
            "  ",
        ]
    ),
    json_values,
)
identifiers = st.none() | json_text | st.integers() | st.floats() | json_values
objects = st.dictionaries(json_text, json_values, max_size=4) | json_values
traits = (
    st.fixed_dictionaries(
        {}, optional={"email": json_text | json_values, "phone": json_text | json_values}
    )
    | objects
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*sorted(EVENT_TYPES), "t", "i", "bogus", ""]) | json_values,
        "userId": identifiers,
        "anonymousId": identifiers,
        "messageId": identifiers,
        "event": json_text | json_values,
        "previousId": identifiers,
        "groupId": identifiers,
        "timestamp": timestamps,
        "originalTimestamp": timestamps,
        "sentAt": timestamps,
        "properties": objects,
        "traits": traits,
        "context": st.fixed_dictionaries({}, optional={"traits": traits, "consent": objects})
        | objects,
        "integrations": objects,
        "flags": json_values,
        "writeKey": json_values,
    },
)
route_types = st.none() | st.sampled_from(sorted(EVENT_TYPES))
batch_defaults = st.none() | st.fixed_dictionaries(
    {}, optional={"context": objects, "integrations": objects, "sentAt": timestamps}
)


def check_outcome(raw: Any, event_type: str | None, defaults: Any) -> None:
    """The property: a normalised event, or a ``ValidationError`` with a code."""
    try:
        event = NORMALIZER.normalize(
            raw, received_at=NOW, source_id="src", event_type=event_type, defaults=defaults
        )
    except ValidationError as error:
        assert isinstance(error.code, str) and error.code
        assert error.message
        return
    assert isinstance(event, dict)
    msgspec.json.encode(event)
    assert event["type"] in EVENT_TYPES
    for name in ("messageId", "timestamp", "receivedAt"):
        assert isinstance(event[name], str) and event[name]
    assert event.get("userId") or event.get("anonymousId")
    parse_timestamp("timestamp", event["timestamp"])
    for path in (("traits", "email"), ("traits", "phone"), ("context", "traits", "email")):
        node: Any = event
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
        assert node is None or isinstance(node, bool) or str(node).startswith(HASH_PREFIX)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=json_values, event_type=route_types)
def test_arbitrary_json_is_accepted_or_rejected_with_a_code(
    raw: Any, event_type: str | None
) -> None:
    check_outcome(raw, event_type, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=event_like, event_type=route_types, defaults=batch_defaults)
def test_event_shaped_json_is_accepted_or_rejected_with_a_code(
    raw: dict[str, Any], event_type: str | None, defaults: Any
) -> None:
    check_outcome(raw, event_type, defaults)


@pytest.mark.parametrize("field", ["userId", "anonymousId", "messageId"])
def test_a_nul_character_in_an_id_is_rejected(field: str) -> None:
    error = rejected({"type": "track", "event": "x", "userId": "u", field: "bad\x00id"})
    assert error.code == "invalid_field"
    assert error.details == {"field": field}


# -- errors describe the problem, never the value ---------------------------------------------

TAINT = "Ann.Lee@Example.com"


@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt"])
def test_an_invalid_timestamp_is_named_not_echoed(field: str) -> None:
    error = rejected({"type": "track", "event": "e", "userId": "u", field: TAINT})
    assert error.code == "invalid_timestamp"
    assert error.details == {"field": field}
    assert field in error.message
    assert "Ann.Lee" not in error.message


_TOP_LEVEL = [
    "type", "event", "userId", "anonymousId", "previousId", "groupId", "messageId",
    "timestamp", "originalTimestamp", "sentAt", "properties", "traits", "context",
    "integrations",
]  # fmt: skip
_tainted = st.one_of(
    st.sampled_from([TAINT, f" {TAINT} ", TAINT * 40, f"{TAINT}\x00", f"2024-05-01T{TAINT}"]),
    st.text(max_size=8).map(lambda text: text + TAINT),
    st.lists(st.just(TAINT), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["a", "email"]), st.just(TAINT), min_size=1),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(st.sampled_from(_TOP_LEVEL), _tainted, min_size=1, max_size=3),
    event_type=route_types,
)
def test_no_error_repeats_a_value_the_client_sent(
    fields: dict[str, Any], event_type: str | None
) -> None:
    raw = {"type": "track", "event": "e", "userId": "u", **fields}
    try:
        normalize(raw, event_type=event_type)
    except ValidationError as error:
        assert "ann.lee" not in msgspec.json.encode(error.to_dict()).decode().lower()
