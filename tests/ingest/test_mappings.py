"""Webhook mappings: JSON Pointers into payloads, conversions, the validator's pointers into
the mapping document, and the built-in Stripe mapping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personify.errors import InvalidDefinition
from personify.ingest.mappings import (
    MISSING,
    STRIPE,
    builtin_mapping,
    escape_pointer,
    parse_mapping,
    resolve_pointer,
    validate_mapping,
)


@given(st.text(max_size=20), st.integers())
def test_a_key_escaped_as_a_pointer_resolves_back(key: str, value: int) -> None:
    assert resolve_pointer({key: {"x": value}}, f"/{escape_pointer(key)}/x") == value


def test_pointers_follow_rfc_6901() -> None:
    doc = {"a/b": {"m~n": [10, 20]}, "": 1, "list": [{"k": "v"}]}
    assert resolve_pointer(doc, "/a~1b/m~0n/1") == 20
    assert resolve_pointer(doc, "/list/0/k") == "v"
    assert resolve_pointer(doc, "/") == 1
    assert resolve_pointer(doc, "") is doc
    for missing in ("/list/01", "/list/2", "/list/-", "/nope", "/list/0/k/deeper"):
        assert resolve_pointer(doc, missing) is MISSING


def problems(document: Any) -> dict[str, str]:
    return {p.pointer: p.message for p in validate_mapping(document)}


def test_the_validator_names_every_problem_by_its_pointer() -> None:
    found = problems(
        {
            "eventType": "type",
            "extra": 1,
            "events": {
                "a/b": {"event": "", "userId": "/u"},
                "ok": {"type": "alias", "anonymousId": "/a"},
                "id": {"type": "identify", "event": "X", "userId": {"path": "/u", "value": 1}},
                "props": {
                    "event": "E",
                    "userId": ["/u", "no-slash"],
                    "properties": {
                        "r": {"path": "/r", "scale": 0, "as": "money", "case": "title"},
                        "bad..name": "/x",
                        "p": {"path": "/p~2"},
                    },
                },
            },
        }
    )
    assert found == {
        "/eventType": "a path is a JSON Pointer, starting with /",
        "/extra": "unknown key (use eventId, eventType, events, name, timestamp)",
        "/eventId": "required: where the sender puts it, as a JSON Pointer",
        "/events/a~1b/event": "a track rule names its event (Order Completed)",
        "/events/ok/type": "use one of track, identify",
        "/events/id/event": "only a track rule names an event",
        "/events/id/userId": "give either path or value",
        "/events/props/userId/1": "a path is a JSON Pointer, starting with /",
        "/events/props/properties/r/scale": "a scale is a non-zero number",
        "/events/props/properties/r/as": "use one of string, number, timestamp",
        "/events/props/properties/r/case": "use one of upper, lower",
        "/events/props/properties/bad..name": "a name is dotted words (traits.email), not empty",
        "/events/props/properties/p/path": "~ in a path is written ~0 (and / in a key ~1)",
    }
    assert problems([]) == {"/": "a mapping is a JSON object"}
    assert "/events" in problems({"eventType": "/t", "eventId": "/i", "events": {}})
    no_identity = {"eventType": "/t", "eventId": "/i", "events": {"x": {"event": "E"}}}
    assert problems(no_identity) == {
        "/events/x": "a rule needs userId or anonymousId (an event needs an identity)"
    }


def test_parse_raises_with_every_problem_in_details() -> None:
    with pytest.raises(InvalidDefinition) as caught:
        parse_mapping({"eventType": 3, "events": []})
    error = caught.value
    assert error.code == "invalid_mapping"
    assert [p["pointer"] for p in error.details["problems"]] == [
        "/eventType",
        "/eventId",
        "/events",
    ]
    assert "(and 2 more)" in error.message
    with pytest.raises(InvalidDefinition) as unknown:
        builtin_mapping("paypal")
    assert unknown.value.code == "unknown_mapping"


def test_values_convert_or_are_left_out() -> None:
    mapping = parse_mapping(
        {
            "eventType": "/t",
            "eventId": "/id",
            "events": {
                "x": {
                    "event": "E",
                    "userId": ["/missing", "/empty", "/user"],
                    "properties": {
                        "cents": {"path": "/amount", "minorUnits": "/cur"},
                        "kwd": {"path": "/amount", "minorUnits": "/cur3"},
                        "scaled": {"path": "/amount", "scale": 0.5},
                        "text": {"path": "/amount", "as": "string"},
                        "number": {"path": "/numeric", "as": "number"},
                        "huge": {"path": "/huge", "as": "number"},
                        "nan": {"path": "/nan", "as": "number"},
                        "when": {"path": "/at", "as": "timestamp"},
                        "never": {"path": "/far", "as": "timestamp"},
                        "object": {"path": "/obj", "as": "string"},
                        "lower": {"path": "/cur", "case": "lower"},
                        "flag": {"value": True},
                        "a.b.c": "/user",
                    },
                }
            },
        }
    )
    payload = {
        "t": "x",
        "id": 12,
        "empty": "",
        "user": "u1",
        "amount": 1999,
        "cur": "USD",
        "cur3": "kwd",
        "numeric": " 2.50 ",
        "huge": "9" * 41,
        "nan": "NaN",
        "at": 1_765_022_400,
        "far": 10**12,
        "obj": {"a": 1},
    }
    mapped = mapping.map(payload)
    assert mapped is not None and mapped.source_type == "x"
    event = mapped.event
    assert event["messageId"] == "12" and event["userId"] == "u1"
    assert event["properties"] == {
        "cents": 19.99,
        "kwd": 1.999,
        "scaled": 999.5,
        "text": "1999",
        "number": 2.5,
        "when": "2025-12-06T12:00:00.000Z",
        "lower": "usd",
        "flag": True,
        "a": {"b": {"c": "u1"}},
    }
    assert mapping.map({"t": "y"}) is None
    assert mapping.map({"no": "type"}) is None


def test_the_stripe_mapping_validates_and_maps_refunds() -> None:
    assert validate_mapping(STRIPE) == []
    stripe = builtin_mapping("stripe")
    refund = {
        "id": "evt_r",
        "type": "charge.refunded",
        "created": 1_765_022_400,
        "data": {
            "object": {
                "id": "ch_1",
                "amount": 5000,
                "amount_refunded": 2500,
                "currency": "eur",
                "payment_intent": "pi_1",
                "customer": "cus_1",
                "billing_details": {"email": "a@b.co"},
                "metadata": {},
            }
        },
    }
    mapped = stripe.map(refund)
    assert mapped is not None
    event = mapped.event
    assert event["event"] == "Order Refunded" and event["anonymousId"] == "cus_1"
    assert event["properties"]["order_id"] == "pi_1"  # the order its payment intent completed
    assert event["properties"]["revenue"] == 25 and event["properties"]["currency"] == "EUR"
    assert event["context"]["traits"]["email"] == "a@b.co"  # hashed by the collector
    # a checkout session pays through a payment intent, which is the one mapped
    assert stripe.map({**refund, "type": "checkout.session.completed"}) is None
