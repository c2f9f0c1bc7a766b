"""PII hashing: normalise, then HMAC-SHA256 under the configured key; raw values never kept."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
import pytest

from personify.events.hashing import HASH_PREFIX, PiiHasher, normalize_pii

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
