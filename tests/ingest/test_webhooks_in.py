"""Signed webhooks in, through the real app: ``POST /v1/webhooks/{source}`` verifies the
signature (good, bad, stale, replayed, tampered), maps the payload (Stripe's, a custom
mapping) and hands the event to the collector; refusals are counted and never logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from personify.clock import FrozenClock
from personify.errors import Conflict, InvalidDefinition, NotFound
from personify.ingest.mappings import parse_mapping
from personify.ingest.signing import SIGNATURE_HEADER, signature_header, verify
from personify.ingest.webhooks import InboundWebhookRepository, signature_id
from tests.api import Harness, assert_error, running_app

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NOW = int(START.timestamp())


def stripe_event(event_id: str = "evt_1", **overrides: Any) -> dict[str, Any]:
    """A Stripe payment_intent.succeeded event, as Stripe posts it."""
    intent: dict[str, Any] = {
        "id": "pi_3Q",
        "object": "payment_intent",
        "amount": 4999,
        "amount_received": 4999,
        "currency": "usd",
        "customer": "cus_9",
        "receipt_email": "Ada.Lovelace@Example.com",
        "description": "two books",
        "metadata": {"user_id": "user-42", "order_id": "order-7"},
    }
    intent.update(overrides)
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "type": "payment_intent.succeeded",
        "created": NOW - 5,
        "livemode": False,
        "data": {"object": intent},
    }


def encoded(payload: Any) -> bytes:
    return msgspec.json.encode(payload)


def signed(
    secret: str, body: bytes, at: int = NOW, header: str = SIGNATURE_HEADER
) -> dict[str, str]:
    return {
        header: signature_header(secret, body, timestamp=at),
        "Content-Type": "application/json",
    }


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", clock=FrozenClock(START)) as h:
        yield h


def enable(harness: Harness, name: str = "stripe", mapping: Any = "stripe") -> str:
    """A source ``name`` taking webhooks; returns its secret."""
    harness.services.sources.create(name)
    _, secret = harness.services.webhooks_in.webhooks.enable(name, mapping)
    assert secret is not None and secret.startswith("whsec_")
    return secret


async def post(harness: Harness, source: str, body: bytes, headers: dict[str, str]) -> Any:
    return await harness.client.post(f"/v1/webhooks/{source}", content=body, headers=headers)


def rejected(harness: Harness) -> dict[str, int]:
    return dict(harness.services.webhooks_in.rejected)


async def test_the_app_serves_the_runtimes_receiver(harness: Harness) -> None:
    assert harness.app.state.ingest.webhooks is harness.services.webhooks_in


async def test_a_signed_stripe_payment_becomes_order_completed_like_a_batch_event(
    harness: Harness,
) -> None:
    secret = enable(harness)
    body = encoded(stripe_event())
    answer = await post(harness, "stripe", body, signed(secret, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "ignored": 0,
    }
    # the same e-mail, sent by a site through /v1/batch: hashed alike
    batch = {
        "batch": [
            {"type": "identify", "userId": "u", "traits": {"email": "ada.lovelace@example.com"}}
        ]
    }
    sent = await harness.client.post("/v1/batch", json=batch, headers=harness.auth)
    assert sent.status_code == 200
    order, identify = await harness.logged()
    source = harness.services.sources.get("stripe")
    assert order["type"] == "track" and order["event"] == "Order Completed"
    assert order["userId"] == "user-42" and order["anonymousId"] == "cus_9"
    assert order["messageId"] == "evt_1"
    assert order["sourceId"] == source.id
    assert order["timestamp"].startswith("2026-12-06T11:59:55")
    props = order["properties"]
    assert props["revenue"] == 49.99 and props["total"] == 49.99
    assert props["currency"] == "USD" and props["order_id"] == "order-7"
    assert props["payment_id"] == "pi_3Q" and props["stripe_customer_id"] == "cus_9"
    email = order["context"]["traits"]["email"]
    assert (
        email.startswith("hmac-sha256:") and "Lovelace" not in msgspec.json.encode(order).decode()
    )
    assert email == identify["traits"]["email"]
    # resent by Stripe (a new timestamp, so a new signature): a duplicate, not a replay
    harness.services.clock.advance(60)  # type: ignore[attr-defined]
    again = await post(harness, "stripe", body, signed(secret, body, NOW + 60))
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert len(await harness.logged()) == 2
    assert harness.services.webhooks_in.mapped == 2


async def test_stripe_signature_header_and_zero_decimal_currencies(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded(stripe_event(amount_received=1200, currency="jpy", metadata={}))
    answer = await post(harness, "stripe", body, signed(secret, body, header="Stripe-Signature"))
    assert answer.status_code == 200, answer.text
    (order,) = await harness.logged()
    # no user id in the metadata: the Stripe customer stands for the user; JPY has no cents
    assert "userId" not in order and order["anonymousId"] == "cus_9"
    assert order["properties"]["revenue"] == 1200 and order["properties"]["currency"] == "JPY"
    assert order["properties"]["order_id"] == "pi_3Q"


async def test_bad_signatures_are_401_counted_and_never_logged(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded(stripe_event())
    good = signed(secret, body)[SIGNATURE_HEADER]
    cases = [
        ({}, "invalid_signature"),  # no header
        ({SIGNATURE_HEADER: "garbage"}, "invalid_signature"),
        ({SIGNATURE_HEADER: good.replace("v1=", "v1=0", 1)[:-1]}, "invalid_signature"),
        (signed("whsec_" + "00" * 32, body), "invalid_signature"),  # another secret
        (signed(secret, body, NOW - 301), "stale_signature"),
        (signed(secret, body, NOW + 301), "stale_signature"),
    ]
    for headers, code in cases:
        assert_error(await post(harness, "stripe", body, headers), 401, code)
    # a tampered body: the amount raised after signing
    tampered = body.replace(b"4999", b"9999")
    assert_error(
        await post(harness, "stripe", tampered, signed(secret, body)), 401, "invalid_signature"
    )
    assert rejected(harness) == {
        "invalid_signature": 5,
        "stale_signature": 2,
        "replayed_signature": 0,
        "unknown_webhook_source": 0,
    }
    assert await harness.logged() == [] and await harness.failed() == []


async def test_a_replayed_request_is_refused_within_the_window(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded(stripe_event())
    headers = signed(secret, body)
    assert (await post(harness, "stripe", body, headers)).status_code == 200
    harness.services.clock.advance(120)  # type: ignore[attr-defined]
    assert_error(await post(harness, "stripe", body, headers), 401, "replayed_signature")
    # the same request signed with two secrets (the sender rotating), replayed with one
    _, newer = harness.services.webhooks_in.webhooks.rotate("stripe")
    both = f"{headers[SIGNATURE_HEADER]},v1={signature_header(newer, body, timestamp=NOW).split('v1=')[1]}"
    assert_error(
        await post(harness, "stripe", body, {SIGNATURE_HEADER: both}), 401, "replayed_signature"
    )
    # past the tolerance the same request is stale, whatever the replay store holds
    harness.services.clock.advance(200)  # type: ignore[attr-defined]
    assert_error(await post(harness, "stripe", body, headers), 401, "stale_signature")
    assert rejected(harness)["replayed_signature"] == 2
    assert len(await harness.logged()) == 1


async def test_unknown_and_disabled_sources_get_the_same_404(harness: Harness) -> None:
    secret = enable(harness)
    harness.services.sources.create("no-webhooks")
    body = encoded(stripe_event())
    answers = [
        await post(harness, name, body, signed(secret, body))
        for name in ("nobody", "no-webhooks", "web")
    ]
    for answer in answers:
        assert_error(answer, 404, "unknown_webhook_source")
    assert len({a.text for a in answers}) == 1
    harness.services.sources.revoke("stripe")
    assert_error(
        await post(harness, "stripe", body, signed(secret, body)), 404, "unknown_webhook_source"
    )
    assert rejected(harness)["unknown_webhook_source"] == 4
    assert await harness.logged() == []


async def test_unmapped_types_are_ignored_and_bad_json_is_400(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded({**stripe_event(), "type": "customer.created"})
    answer = await post(harness, "stripe", body, signed(secret, body))
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 0 and answer.json()["ignored"] == 1
    garbage = b"{not json"
    assert_error(
        await post(harness, "stripe", garbage, signed(secret, garbage)), 400, "invalid_json"
    )
    # the payment lacks every identity: dead-lettered like a batch event without one
    anonymous = encoded(stripe_event("evt_2", customer=None, metadata={}))
    answer = await post(harness, "stripe", anonymous, signed(secret, anonymous))
    assert answer.status_code == 200 and answer.json()["rejected"] == 1
    (letter,) = await harness.failed()
    assert letter["code"] == "missing_identity"
    assert "Lovelace" not in msgspec.json.encode(letter).decode()
    assert await harness.logged() == []
    assert harness.services.webhooks_in.ignored == 1


async def test_rotation_keeps_old_secrets_until_retired(harness: Harness) -> None:
    old = enable(harness)
    repo = harness.services.webhooks_in.webhooks
    harness.services.clock.advance(3600)  # type: ignore[attr-defined]
    now = NOW + 3600
    webhook, new = repo.rotate("stripe")
    assert [s.id for s in webhook.secrets] == [1, 2] and new != old
    for index, secret in enumerate((old, new)):
        body = encoded(stripe_event(f"evt_rot{index}"))
        assert (await post(harness, "stripe", body, signed(secret, body, now))).status_code == 200
    # secrets made more than 30 minutes ago go; the newest always stays
    webhook, removed = repo.retire("stripe", older_than=timedelta(minutes=30))
    assert [s.id for s in removed] == [1] and [s.id for s in webhook.secrets] == [2]
    body = encoded(stripe_event("evt_rot2"))
    assert_error(
        await post(harness, "stripe", body, signed(old, body, now)), 401, "invalid_signature"
    )
    assert (await post(harness, "stripe", body, signed(new, body, now))).status_code == 200
    webhook, removed = repo.retire("stripe", older_than=timedelta(0))
    assert removed == [] and [s.id for s in webhook.secrets] == [2]


async def test_a_custom_mapping_from_json(harness: Harness) -> None:
    mapping = parse_mapping(
        {
            "name": "shop",
            "eventType": "/kind",
            "eventId": "/uid",
            "timestamp": {"path": "/at", "as": "timestamp"},
            "events": {
                "signup": {
                    "type": "identify",
                    "userId": "/user/id",
                    "traits": {"email": "/user/email", "plan": {"path": "/plan", "case": "upper"}},
                },
                "cart.paid": {
                    "event": "Order Completed",
                    "userId": {"path": "/user/id", "as": "string"},
                    "properties": {
                        "revenue": {"path": "/total_cents", "scale": 0.01},
                        "products.count": {"path": "/items", "as": "number"},
                        "channel": {"value": "shop-webhook"},
                    },
                },
            },
        }
    )
    secret = enable(harness, "shop", mapping)
    for payload in (
        {
            "kind": "signup",
            "uid": "s1",
            "at": NOW,
            "user": {"id": "u1", "email": "Bo@X.io"},
            "plan": "pro",
        },
        {"kind": "cart.paid", "uid": "c1", "user": {"id": 7}, "total_cents": 1999, "items": "3"},
    ):
        body = encoded(payload)
        answer = await post(harness, "shop", body, signed(secret, body))
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
    signup, paid = await harness.logged()
    assert signup["type"] == "identify" and signup["userId"] == "u1"
    assert signup["traits"]["plan"] == "PRO" and signup["traits"]["email"].startswith(
        "hmac-sha256:"
    )
    assert signup["messageId"] == "s1" and signup["timestamp"].startswith("2026-12-06T12:00:00")
    assert paid["userId"] == "7" and paid["event"] == "Order Completed"
    assert paid["properties"] == {
        "revenue": 19.99,
        "products": {"count": 3},
        "channel": "shop-webhook",
    }
    assert harness.services.webhooks_in.webhooks.get("shop").mapping.name == "shop"


async def test_the_route_claims_only_post_on_one_non_numeric_segment(harness: Harness) -> None:
    enable(harness)
    preflight = await harness.client.options("/v1/webhooks/stripe")
    assert preflight.status_code == 204 and preflight.headers["allow"] == "POST, OPTIONS"
    # the admin API's own routes are untouched: a numeric id, other methods, deeper paths
    assert (await harness.client.get("/v1/webhooks", headers=harness.admin)).status_code == 200
    assert_error(
        await harness.client.get("/v1/webhooks/12", headers=harness.admin), 404, "webhook_not_found"
    )
    assert (await harness.client.post("/v1/webhooks/12", headers=harness.admin)).status_code == 405
    assert (await harness.client.get("/v1/webhooks/stripe", headers=harness.admin)).status_code in (
        404,
        405,
    )
    assert harness.services.webhooks_in.rejected["unknown_webhook_source"] == 0


async def test_ingest_status_and_metrics_show_the_counts(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded(stripe_event())
    await post(harness, "stripe", body, {SIGNATURE_HEADER: "t=1,v1=" + "0" * 64})
    await post(harness, "stripe", body, signed(secret, body))
    counts = harness.services.webhooks_in.to_dict()
    assert counts["rejected"]["byReason"]["invalid_signature"] == 1 and counts["mapped"] == 1
    scraped = await harness.client.get("/metrics", headers=harness.admin)
    assert scraped.status_code == 200, scraped.text
    text = scraped.text
    assert 'personify_webhooks_in_rejected_total{reason="invalid_signature"} 1.0' in text
    assert 'personify_webhooks_in_taken_total{outcome="mapped"} 1.0' in text


# -- the repository and the replay store, on their own ------------------------------------------


def test_enable_rules(tmp_path: Path) -> None:
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database
    from tests.conftest import make_settings

    db = open_database(make_settings(tmp_path / "data"))
    clock = FrozenClock(START)
    sources = SourceRepository(db, clock=clock)
    repo = InboundWebhookRepository(db, clock=clock, tolerance_s=300)
    with pytest.raises(NotFound):
        repo.enable("nobody")
    sources.create("2024")
    webhook, secret = repo.enable("2024")
    # an all-digit name is an admin webhook id in a path: the sender is given the source id
    assert secret and webhook.path == f"/v1/webhooks/{webhook.source_id}"
    again, none = repo.enable("2024", "stripe")
    assert none is None and again.secrets == webhook.secrets
    with pytest.raises(InvalidDefinition):
        repo.enable("2024", "paypal")
    with pytest.raises(NotFound):
        repo.get("nobody")
    sources.create("gone")
    sources.revoke("gone")
    with pytest.raises(Conflict):
        repo.enable("gone")
    assert repo.disable("2024") and not repo.disable("2024")
    assert repo.target("2024") is None
    # replay store: seen once, pruned after twice the tolerance
    assert repo.remember("s", "a") and not repo.remember("s", "a")
    clock.advance(599)
    assert repo.prune() == 0
    clock.advance(2)
    assert repo.prune() == 1 and repo.remember("s", "a")
    repo.forget("a")
    assert repo.remember("s", "a")
    db.dispose()


def test_signature_ids_do_not_depend_on_which_secret_signed() -> None:
    body = b'{"id":"evt_1"}'
    assert signature_id("src", NOW, body) == signature_id("src", NOW, body)
    assert signature_id("src", NOW, body) != signature_id("src", NOW + 1, body)
    assert signature_id("src", NOW, body) != signature_id("other", NOW, body)
    assert verify(
        "whsec_x" * 3, signature_header("whsec_x" * 3, body, timestamp=NOW), body, now=NOW
    )


async def test_concurrent_replays_take_one(harness: Harness) -> None:
    secret = enable(harness)
    body = encoded(stripe_event())
    headers = signed(secret, body)
    answers = await asyncio.gather(*(post(harness, "stripe", body, headers) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 401, 401, 401, 401]
    assert len(await harness.logged()) == 1


def test_the_command_line_enables_rotates_and_retires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from personify.cli.main import main

    monkeypatch.chdir(tmp_path)
    env = {
        "PERSONIFY_DATA_DIR": str(tmp_path / "data"),
        "PERSONIFY_PII_HASH_KEY": "x",
        "PERSONIFY_ENVIRONMENT": "test",
    }

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    run("sources", "create", "stripe")
    enabled = run("sources", "webhook", "stripe")
    assert "POST /v1/webhooks/stripe" in enabled and "mapping: stripe" in enabled
    first = enabled.split("secret: ")[1].strip()
    assert first.startswith("whsec_")
    rotated = run("sources", "webhook-rotate", "stripe")
    second = rotated.split("secret: ")[1].strip()
    assert second != first and "#1" in rotated and "#2" in rotated
    retired = run("sources", "webhook-retire", "stripe", "--older-than", "0s")
    assert "retired 1 secret(s): 1" in retired and "#1" not in retired
    custom = tmp_path / "shop.json"
    custom.write_text(
        json.dumps({"name": "shop", "eventType": "/t", "eventId": "/i", "events": {}})
    )
    refused = CliRunner().invoke(
        main, ["sources", "webhook", "stripe", "--mapping", f"@{custom}"], env=env
    )
    assert refused.exit_code != 0 and "/events:" in refused.output
    custom.write_text(
        json.dumps(
            {
                "name": "shop",
                "eventType": "/t",
                "eventId": "/i",
                "events": {"x": {"event": "X", "userId": "/u"}},
            }
        )
    )
    changed = run("sources", "webhook", "stripe", "--mapping", f"@{custom}")
    assert "mapping: shop" in changed and "secrets are unchanged" in changed
    bad = CliRunner().invoke(
        main, ["sources", "webhook-retire", "stripe", "--older-than", "soon"], env=env
    )
    assert bad.exit_code != 0 and "no duration" in bad.output


async def test_the_route_is_in_the_served_document(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/webhooks/{source}"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "404", "405", "413", "415", "503"}
    assert "replayed_signature" in operation["responses"]["401"]["description"]
    assert operation["security"] == [{"webhookSignature": []}]
    (source,) = operation["parameters"]
    assert source["schema"]["pattern"] == "^[^/]*[^/0-9][^/]*$"
    scheme = document["components"]["securitySchemes"]["webhookSignature"]
    assert scheme == {**scheme, "type": "apiKey", "name": "Personify-Signature", "in": "header"}
    # the admin API's webhook routes are still there, beside it
    assert {"get", "delete"} <= set(document["paths"]["/v1/webhooks/{webhook_id}"])
