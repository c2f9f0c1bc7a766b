"""PII hashing: normalise, then HMAC-SHA256 under the configured key; raw values never kept."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from personify.errors import ConfigurationError
from personify.events.hashing import (
    HASH_PREFIX,
    PII_KEYS,
    PiiHasher,
    is_pii_digest,
    normalize_pii,
    pii_key_name,
)
from personify.events.normalize import Normalizer
from tests.conftest import make_settings

PATHS = ["traits.email", "traits.phone", "context.traits.email"]


def hasher(key: bytes = b"secret") -> PiiHasher:
    return PiiHasher(key, PATHS)


@pytest.mark.parametrize(
    ("field", "raw", "canonical"),
    [
        ("email", "  Ann.Lee@Example.COM\n", "ann.lee@example.com"),
        ("work_email", "BOB@X.IO", "bob@x.io"),
        ("phone", "+1 (555) 010-9999", "15550109999"),
        ("mobilePhone", " 0049 30 1234-5 ", "00493012345"),
        ("ssn", "  123 ", "123"),
    ],
)
def test_values_are_normalised_before_hashing(field: str, raw: str, canonical: str) -> None:
    assert normalize_pii(field, raw) == canonical


def test_the_hash_is_hmac_sha256_of_the_canonical_value() -> None:
    expected = hmac.new(b"secret", b"ann@example.com", hashlib.sha256).hexdigest()
    assert hasher().hash_value("email", " Ann@Example.com ") == HASH_PREFIX + expected


def test_different_spellings_hash_alike_and_different_keys_differ() -> None:
    a = hasher().hash_value("email", "ANN@example.com")
    b = hasher().hash_value("email", "ann@example.com  ")
    assert a == b
    assert hasher(b"other-key").hash_value("email", "ann@example.com") != a
    phones = {hasher().hash_value("phone", p) for p in ["+1 555 0100", "15550100", "1-555-0100"]}
    assert len(phones) == 1


def test_apply_hashes_every_configured_path_and_leaves_the_rest() -> None:
    event: dict[str, Any] = {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "Ann@Example.com", "phone": "+1 555 0100", "name": "Ann"},
        "context": {"traits": {"email": "ann@example.com"}, "ip": "10.0.0.1"},
        "properties": {"email": "left@alone.com"},
    }
    hasher().apply(event)
    assert event["traits"]["email"] == hasher().hash_value("email", "ann@example.com")
    assert event["traits"]["phone"] == hasher().hash_value("phone", "15550100")
    assert event["context"]["traits"]["email"] == event["traits"]["email"]
    assert event["traits"]["name"] == "Ann"
    assert event["context"]["ip"] == "10.0.0.1"
    assert event["properties"]["email"] == "left@alone.com"
    encoded = msgspec.json.encode(event)
    assert b"Ann@" not in encoded and b"ann@" not in encoded and b"555" not in encoded


def test_apply_does_not_touch_the_callers_nested_objects() -> None:
    traits = {"email": "ann@example.com"}
    context = {"traits": {"email": "ann@example.com"}}
    event: dict[str, Any] = {"traits": traits, "context": context}
    hasher().apply(event)
    assert traits == {"email": "ann@example.com"}
    assert context == {"traits": {"email": "ann@example.com"}}
    assert event["traits"]["email"].startswith(HASH_PREFIX)


def test_hashing_twice_changes_nothing() -> None:
    event: dict[str, Any] = {"traits": {"email": "ann@example.com"}}
    hasher().apply(event)
    once = msgspec.json.encode(event)
    hasher().apply(event)
    assert msgspec.json.encode(event) == once


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (15550100, "hash"),
        ({"nested": "ann@example.com"}, None),
        (["ann@example.com"], None),
    ],
)
def test_odd_values_on_a_pii_path_are_hashed_or_dropped_never_kept(
    value: Any, expected: Any
) -> None:
    event: dict[str, Any] = {"traits": {"phone": value}}
    hasher().apply(event)
    if expected == "hash":
        assert event["traits"]["phone"] == hasher().hash_value("phone", str(value))
    else:
        assert event["traits"]["phone"] == expected


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"traits": None},
        {"context": None},
        {"traits": {"name": "Ann"}},
    ],
)
def test_events_without_a_pii_object_are_left_alone(event: dict[str, Any]) -> None:
    before = msgspec.json.encode(event)
    hasher().apply(event)
    assert msgspec.json.encode(event) == before


@pytest.mark.parametrize(
    ("event", "dropped"),
    [
        ({"traits": "ann@example.com"}, ("traits",)),
        ({"context": {"traits": ["ann@example.com"]}}, ("context", "traits")),
        ({"traits": {"email": {"work": "ann@example.com"}}}, ("traits", "email")),
    ],
)
def test_malformed_values_on_a_pii_path_are_dropped_not_kept_raw(
    event: dict[str, Any], dropped: tuple[str, ...]
) -> None:
    hasher().apply(event)
    assert b"ann@example.com" not in msgspec.json.encode(event)
    node: Any = event
    for name in dropped:
        node = node[name]
    assert node is None


def test_configured_paths_replace_the_defaults() -> None:
    custom = PiiHasher(b"k", ["properties.customer.email", ""])
    event: dict[str, Any] = {
        "properties": {"customer": {"email": "A@B.C"}},
        "traits": {"email": "kept@b.c"},
    }
    custom.apply(event)
    assert event["properties"]["customer"]["email"] == custom.hash_value("email", "a@b.c")
    assert event["traits"]["email"] == "kept@b.c"


# -- the default paths: every PII key spelling wherever the Segment spec puts traits ----------

DEFAULT_PATHS = make_settings(Path("unused")).pii_paths
DEFAULT = PiiHasher(b"secret", DEFAULT_PATHS)
EMAIL_SPELLINGS = [
    "email", "Email", "EMAIL", "e-mail", "E-Mail", "e_mail", "e.mail", "E MAIL", "emailAddress",
    "email_address", "EmailAddress", "email-address", "mail", "Mail", "userEmail", "work_email",
]  # fmt: skip
PHONE_SPELLINGS = [
    "phone", "Phone", "PHONE", "phone_number", "phoneNumber", "Phone-Number", "phone number",
    "mobile", "Mobile", "MOBILE", "mobile_phone", "mobilePhone", "mobileNumber", "cell",
    "Cell", "cellphone", "cell_phone", "CellPhone", "tel", "Tel", "telephone", "Telephone",
    "fax", "homePhone", "msisdn",
]  # fmt: skip
EVENTS = {
    "identify": {"userId": "u1"},
    "track": {"userId": "u1", "event": "Clicked"},
    "page": {"anonymousId": "a1", "name": "Home"},
    "screen": {"userId": "u1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "g1"},
    "alias": {"userId": "u1", "previousId": "a1"},
}


def _at(event: dict[str, Any], location: tuple[str, ...]) -> dict[str, Any]:
    node: Any = event
    for name in location:
        node = node[name]
    assert isinstance(node, dict)
    return node


@pytest.mark.parametrize("location", [("traits",), ("context", "traits")])
@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_the_defaults_hash_every_spelling_of_email_and_phone_at_both_trait_locations(
    kind: str, location: tuple[str, ...]
) -> None:
    traits: dict[str, Any] = {"plan": "pro"}
    for n, key in enumerate(EMAIL_SPELLINGS):
        traits[key] = f" Ann.Lee{n}@Example.com"
    for n, key in enumerate(PHONE_SPELLINGS):
        traits[key] = f"+49 (30) 1234-{n:03d}"
    nested: dict[str, Any] = traits
    for name in reversed(location):
        nested = {name: nested}
    raw = {"type": kind, **EVENTS[kind], **nested}
    event = Normalizer(DEFAULT).normalize(raw, received_at=datetime.now(UTC), source_id="src")
    stored = _at(event, location)
    for n, key in enumerate(EMAIL_SPELLINGS):
        assert stored[key] == DEFAULT.hash_value("email", f"ann.lee{n}@example.com"), key
    for n, key in enumerate(PHONE_SPELLINGS):
        assert stored[key] == DEFAULT.hash_value("phone", f"49301234{n:03d}"), key
    assert stored["plan"] == "pro"
    encoded = msgspec.json.encode(event)
    assert b"Ann.Lee" not in encoded and b"ann.lee" not in encoded and b"1234-" not in encoded


def test_context_traits_phone_is_hashed_by_default() -> None:
    event: dict[str, Any] = {"context": {"traits": {"phone": "+1 555 0100"}, "ip": "10.0.0.1"}}
    DEFAULT.apply(event)
    assert event["context"] == {
        "traits": {"phone": DEFAULT.hash_value("phone", "15550100")},
        "ip": "10.0.0.1",
    }


@pytest.mark.parametrize(
    "key", ["name", "plan", "emailVerified", "phone_type", "mailbox", "telemetry", "cells"]
)
def test_keys_that_are_not_pii_names_are_left_alone(key: str) -> None:
    event: dict[str, Any] = {"traits": {key: "kept"}, "context": {"traits": {key: "kept"}}}
    DEFAULT.apply(event)
    assert event == {"traits": {key: "kept"}, "context": {"traits": {key: "kept"}}}


def test_booleans_under_pii_names_are_kept() -> None:
    event: dict[str, Any] = {"traits": {"Email": True, "PHONE": False}}
    DEFAULT.apply(event)
    assert event == {"traits": {"Email": True, "PHONE": False}}


def test_a_configured_path_matches_keys_by_key_name_below_its_top_level_field() -> None:
    custom = PiiHasher(b"k", ["properties.customer.email"])
    event: dict[str, Any] = {"properties": {"Customer": {"E-Mail": "A@B.C"}, "email": "kept"}}
    custom.apply(event)
    assert event["properties"]["Customer"]["E-Mail"] == custom.hash_value("email", "a@b.c")
    assert event["properties"]["email"] == "kept"
    # the top-level field is the spec's own name: "Properties" is another field
    other: dict[str, Any] = {"Properties": {"customer": {"email": "kept"}}}
    custom.apply(other)
    assert other == {"Properties": {"customer": {"email": "kept"}}}


@pytest.mark.parametrize("path", ["*", "*.email", "traits.*.email"])
def test_a_star_anywhere_but_at_the_end_of_a_path_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PiiHasher(b"k", [path])
    assert caught.value.code == "invalid_pii_path"


@pytest.mark.parametrize(
    "key", ["Email", "e-mail", "E_MAIL", "emailAddress", "PHONE", "phone_number", "Mobile"]
)
def test_key_names_ignore_case_and_separators(key: str) -> None:
    assert pii_key_name(key) in PII_KEYS


# -- a value that only looks hashed ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "hmac-sha256:someone@example.com",
        "hmac-sha256:",
        "hmac-sha256:+1 555 0100",
        "hmac-sha256:" + "a" * 63,
        "hmac-sha256:" + "a" * 65,
        "hmac-sha256:" + "A" * 64,
        "hmac-sha256:" + "g" * 64,
        "hmac-sha256:" + "a" * 64 + "\n",
        " hmac-sha256:" + "a" * 64,
    ],
)
def test_a_value_that_only_starts_like_a_digest_is_hashed(value: str) -> None:
    event: dict[str, Any] = {"traits": {"email": value}, "context": {"traits": {"phone": value}}}
    DEFAULT.apply(event)
    assert event["traits"]["email"] == DEFAULT.hash_value("email", value)
    assert event["context"]["traits"]["phone"] == DEFAULT.hash_value("phone", value)
    assert event["traits"]["email"] != value


def test_a_digest_of_ours_is_kept_as_it_is() -> None:
    digest = DEFAULT.hash_value("email", "ann@example.com")
    assert is_pii_digest(digest)
    event: dict[str, Any] = {"traits": {"EMAIL": digest}}
    DEFAULT.apply(event)
    assert event == {"traits": {"EMAIL": digest}}


@given(
    st.sampled_from(sorted(PII_KEYS)),
    st.text(min_size=1, max_size=40),
    st.sampled_from(["", HASH_PREFIX, HASH_PREFIX.upper(), " " + HASH_PREFIX]),
)
def test_no_raw_value_survives_under_a_pii_key(name: str, text: str, prefix: str) -> None:
    value = prefix + text
    assume(not is_pii_digest(value))
    event: dict[str, Any] = {"traits": {name.upper(): value}}
    DEFAULT.apply(event)
    stored = event["traits"][name.upper()]
    assert is_pii_digest(stored)
    assert stored == DEFAULT.hash_value(name, value)
