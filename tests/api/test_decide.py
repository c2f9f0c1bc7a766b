"""``POST /v1/decide`` through the real ASGI app: events in, a segment entered, the targeted
banner decided with a trace naming the rule, the exposure event in the log; eligibility
(schedule boundaries on a movable clock, locale, frequency caps), fallbacks, the public shape
for write keys with CORS, and the catalog cache reloading on publish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock
from personify.content.tables import content_exposures
from tests.api import Harness, assert_error, running_app

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SHOE_FANS = {
    "trait": "favourite",
    "op": "eq",
    "value": "shoes",
}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def harness(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", clock=clock) as h:
        yield h


async def admin_post(harness: Harness, path: str, body: Any, **params: Any) -> dict[str, Any]:
    response = await harness.client.post(path, json=body, headers=harness.admin, params=params)
    assert response.status_code in (200, 201), response.text
    document: dict[str, Any] = response.json()
    return document


async def identify(harness: Harness, user_id: str, traits: dict[str, Any], **extra: Any) -> None:
    body = {"type": "identify", "userId": user_id, "traits": traits, **extra}
    response = await harness.client.post("/v1/batch", json={"batch": [body]}, headers=harness.auth)
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)


async def decide(harness: Harness, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await harness.client.post("/v1/decide", json=body, headers=headers or harness.admin)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def hero(user: str = "u1", **context: Any) -> dict[str, Any]:
    return {"userId": user, "placements": [{"id": "home-hero"}], "context": context}


async def shop(harness: Harness) -> None:
    """A segment, a targeted banner, a generic one and the home page's hero placement."""
    await admin_post(harness, "/v1/segments", {"key": "shoe-fans", "condition": SHOE_FANS})
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "generic",
            "type": "banner",
            "fields": {"title": "Welcome"},
            "placements": [],
        },
        publish="true",
    )
    await admin_post(harness, "/v1/placements", {"id": "home-hero", "defaultItem": "generic"})
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "shoe-banner",
            "type": "banner",
            "fields": {"title": "New trail shoes"},
            "placements": ["home-hero"],
            "priority": 10,
            "targeting": {"segments": ["shoe-fans"]},
        },
        publish="true",
    )
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "everyone",
            "type": "banner",
            "fields": {"title": "Free delivery"},
            "placements": ["home-hero"],
            "priority": 1,
        },
        publish="true",
    )


async def test_events_in_segment_entered_banner_decided_exposure_logged(harness: Harness) -> None:
    await shop(harness)
    await identify(harness, "u1", {"favourite": "shoes"})
    await identify(harness, "u2", {"favourite": "hats"})

    decided = await decide(harness, hero("u1", page="/", locale="en-GB"))
    placement = decided["placements"]["home-hero"]
    assert placement["fallback"] is False and placement["strategy"] == "priority"
    (item,) = placement["items"]
    assert item["id"] == "shoe-banner" and item["content"] == {"title": "New trail shoes"}
    assert item["probability"] == 1.0 and item["version"] == 1
    assert placement["trace"]["matched"] == {"shoe-banner": {"segments": ["shoe-fans"]}}
    assert placement["trace"]["scores"] == {"shoe-banner": 10.0, "everyone": 1.0}
    assert decided["trace"]["segments"] == ["shoe-fans"]

    other = (await decide(harness, hero("u2")))["placements"]["home-hero"]
    assert [i["id"] for i in other["items"]] == ["everyone"]
    assert other["trace"]["excluded"] == [{"id": "shoe-banner", "reason": "segments_not_matched"}]

    logged = [e for e in await harness.logged() if e.get("event") == "Content Exposed"]
    assert [e["messageId"] for e in logged] == [
        decided["decisionId"],
        (await harness.logged())[-1]["messageId"],
    ]
    exposure = logged[0]
    assert exposure["userId"] == "u1" and exposure["sourceId"] == "personify-decide"
    assert exposure["properties"]["placements"] == [
        {
            "id": "home-hero",
            "strategy": "priority",
            "fallback": False,
            "reason": None,
            "items": [
                {"id": "shoe-banner", "version": 1, "variant": None, "probability": 1.0, "rank": 0}
            ],
        }
    ]
    assert exposure["context"]["page"] == "/" and exposure["context"]["locale"] == "en-GB"
    # the worker keeps the exposures (not as the user's activity: the profile is unchanged)
    before = (await harness.client.get("/v1/profiles/u1", headers=harness.admin)).json()
    await harness.services.worker.run(until_idle=True)
    after = (await harness.client.get("/v1/profiles/u1", headers=harness.admin)).json()
    assert after["features"]["events_total"] == before["features"]["events_total"]
    with harness.services.db.connect() as conn:
        kept = conn.execute(
            sa.select(content_exposures.c.item_id, content_exposures.c.profile_id)
        ).all()
    assert sorted(item for item, _ in kept) == ["everyone", "shoe-banner"]


async def test_schedule_boundaries_follow_the_clock(harness: Harness, clock: FrozenClock) -> None:
    await shop(harness)
    await identify(harness, "u1", {})
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "flash-sale",
            "type": "banner",
            "placements": ["home-hero"],
            "priority": 50,
            # 14:00 to 15:00 in Paris is 13:00 to 14:00 UTC in December
            "schedule": {
                "start": "2026-12-01T14:00",
                "end": "2026-12-01T15:00",
                "timezone": "Europe/Paris",
            },
        },
        publish="true",
    )

    async def first() -> tuple[str, list[dict[str, str]]]:
        placement = (await decide(harness, hero()))["placements"]["home-hero"]
        return placement["items"][0]["id"], placement["trace"]["excluded"]

    top, excluded = await first()
    assert top == "everyone" and {"id": "flash-sale", "reason": "not_started"} in excluded
    clock.advance(3600 - 1)  # 12:59:59 UTC
    assert (await first())[0] == "everyone"
    clock.advance(1)  # 13:00:00 UTC: the start is inclusive
    assert (await first())[0] == "flash-sale"
    clock.advance(3600 - 1)
    assert (await first())[0] == "flash-sale"
    clock.advance(1)  # 14:00:00 UTC: the end is exclusive
    top, excluded = await first()
    assert top == "everyone" and {"id": "flash-sale", "reason": "ended"} in excluded


async def test_locale_and_frequency_caps(harness: Harness, clock: FrozenClock) -> None:
    await shop(harness)
    await identify(harness, "u1", {})
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "bonjour",
            "type": "banner",
            "placements": ["home-hero"],
            "priority": 40,
            "locale": "fr",
        },
        publish="true",
    )
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "capped",
            "type": "banner",
            "placements": ["home-hero"],
            "priority": 30,
            "frequencyCap": {"max": 2, "window": "1d"},
        },
        publish="true",
    )
    french = (await decide(harness, hero(locale="fr-CA")))["placements"]["home-hero"]
    assert french["items"][0]["id"] == "bonjour"
    english = (await decide(harness, hero(locale="en-US")))["placements"]["home-hero"]
    assert english["items"][0]["id"] == "capped"
    assert {"id": "bonjour", "reason": "locale_not_matched"} in english["trace"]["excluded"]
    # shown once (the French decision showed bonjour): once more, then it is capped
    assert (await decide(harness, hero()))["placements"]["home-hero"]["items"][0]["id"] == "capped"
    await harness.services.worker.run(until_idle=True)
    capped = (await decide(harness, hero()))["placements"]["home-hero"]
    assert capped["items"][0]["id"] == "everyone"
    assert {"id": "capped", "reason": "frequency_cap"} in capped["trace"]["excluded"]
    clock.advance(86_400)
    assert (await decide(harness, hero()))["placements"]["home-hero"]["items"][0]["id"] == "capped"


async def test_fallbacks_say_why(harness: Harness) -> None:
    await shop(harness)
    unknown = await decide(harness, hero("nobody"))
    placement = unknown["placements"]["home-hero"]
    assert placement["fallback"] is True and placement["reason"] == "unknown_user"
    assert [i["id"] for i in placement["items"]] == ["generic"]
    assert placement["strategy"] is None

    consent = {"consent": {"categoryPreferences": {"personalization": False}}}
    await identify(harness, "private", {"favourite": "shoes"}, context=consent)
    private = (await decide(harness, hero("private")))["placements"]["home-hero"]
    assert private["reason"] == "no_consent" and private["items"][0]["id"] == "generic"

    missing = await decide(
        harness, {"userId": "nobody", "placements": [{"id": "nowhere"}, {"id": "home-hero"}]}
    )
    assert missing["placements"]["nowhere"] == {
        "items": [],
        "strategy": None,
        "fallback": True,
        "reason": "unknown_placement",
        "trace": {"reason": "unknown_placement"},
    }

    await identify(harness, "u2", {"favourite": "hats"})
    await harness.client.delete("/v1/content/items/everyone", headers=harness.admin)
    empty = (await decide(harness, hero("u2")))["placements"]["home-hero"]
    assert empty["reason"] == "no_eligible_items" and empty["items"][0]["id"] == "generic"


async def test_several_placements_never_repeat_an_item(harness: Harness) -> None:
    await shop(harness)
    await admin_post(harness, "/v1/placements", {"id": "sidebar", "limit": 3})
    await admin_post(
        harness,
        "/v1/content/import",
        {
            "items": [
                {
                    "id": f"side-{n}",
                    "type": "banner",
                    "fields": {"category": "shoes" if n < 2 else "hats"},
                    "placements": ["home-hero", "sidebar"],
                    "priority": 20 - n,
                }
                for n in range(4)
            ]
        },
        publish="true",
    )
    await identify(harness, "u1", {})
    decided = await decide(
        harness, {"userId": "u1", "placements": [{"id": "home-hero"}, {"id": "sidebar"}]}
    )
    hero_ids = [i["id"] for i in decided["placements"]["home-hero"]["items"]]
    side_ids = [i["id"] for i in decided["placements"]["sidebar"]["items"]]
    assert hero_ids == ["side-0"]
    # side-0 is on the hero already; the shoes category too, so the hats come first
    assert side_ids == ["side-2", "side-3", "side-1"]
    assert decided["placements"]["sidebar"]["trace"]["diversified"] is True
    assert {"id": "side-0", "reason": "shown_in_another_placement"} in decided["placements"][
        "sidebar"
    ]["trace"]["excluded"]


async def test_write_keys_get_the_public_shape_with_cors(harness: Harness) -> None:
    await shop(harness)
    await identify(harness, "u1", {"favourite": "shoes"})
    response = await harness.client.post(
        "/v1/decide",
        content=b'{"userId": "u1", "placements": [{"id": "home-hero"}]}',
        headers={**harness.auth, "content-type": "text/plain"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    body = response.json()
    assert set(body) == {"decisionId", "placements"}
    assert body["placements"]["home-hero"] == {
        "items": [
            {
                "id": "shoe-banner",
                "version": 1,
                "variant": None,
                "score": 10.0,
                "probability": 1.0,
                "rank": 0,
                "content": {"title": "New trail shoes"},
            }
        ],
        "strategy": "priority",
        "fallback": False,
    }
    unknown = await harness.client.post(
        "/v1/decide",
        json={
            "userId": "nobody",
            "placements": [{"id": "home-hero"}],
            "writeKey": harness.write_key,
        },
    )
    assert unknown.json()["placements"]["home-hero"] == {
        "items": unknown.json()["placements"]["home-hero"]["items"],
        "strategy": None,
        "fallback": True,
    }
    preflight = await harness.client.options("/v1/decide")
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["access-control-allow-methods"]


async def test_bad_requests_and_credentials(harness: Harness) -> None:
    no_user = await harness.client.post(
        "/v1/decide", json={"placements": [{"id": "x"}]}, headers=harness.admin
    )
    assert_error(no_user, 400, "missing_user")
    no_placements = await harness.client.post(
        "/v1/decide", json={"userId": "u", "placements": []}, headers=harness.admin
    )
    assert no_placements.status_code == 400
    anonymous = await harness.client.post("/v1/decide", json=hero())
    assert_error(anonymous, 401, "missing_credentials")
    # errors carry CORS too, so a page can read them
    assert anonymous.headers["access-control-allow-origin"] == "*"
    wrong = await harness.client.post("/v1/decide", json={**hero(), "writeKey": "wk_nope"})
    assert_error(wrong, 401, "invalid_write_key")
    bad_bearer = await harness.client.post(
        "/v1/decide", json=hero(), headers={"Authorization": "Bearer pk_nope"}
    )
    assert_error(bad_bearer, 401, "invalid_api_key")


async def test_variants_are_stable_per_user_and_weighted(harness: Harness) -> None:
    await shop(harness)
    response = await harness.client.patch(
        "/v1/content/items/everyone",
        json={
            "priority": 99,
            "variants": [
                {"key": "red", "fields": {"colour": "red"}, "weight": 3},
                {"key": "blue", "fields": {"colour": "blue"}, "weight": 1},
            ],
        },
        headers=harness.admin,
        params={"publish": "true"},
    )
    assert response.status_code == 200, response.text
    seen: dict[str, int] = {"red": 0, "blue": 0}
    for n in range(20):
        body = {"anonymousId": f"visitor-{n}", "placements": [{"id": "home-hero"}]}
        first = (await decide(harness, body))["placements"]["home-hero"]
        # an unknown visitor gets the default: personalised variants need a profile
        assert first["items"][0]["id"] == "generic"
    users = [{"type": "identify", "userId": f"user-{n}", "traits": {}} for n in range(120)]
    response = await harness.client.post("/v1/batch", json={"batch": users}, headers=harness.auth)
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    for n in range(120):
        one = (await decide(harness, hero(f"user-{n}")))["placements"]["home-hero"]["items"][0]
        two = (await decide(harness, hero(f"user-{n}")))["placements"]["home-hero"]["items"][0]
        assert one["variant"] == two["variant"]
        assert one["content"]["colour"] == one["variant"]
        assert one["probability"] == (0.75 if one["variant"] == "red" else 0.25)
        seen[one["variant"]] += 1
    assert 70 < seen["red"] < 110, seen


async def test_edge_answers_per_segment_combination_with_http_caching(harness: Harness) -> None:
    await shop(harness)
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "for-pros",
            "type": "banner",
            "placements": ["home-hero"],
            "priority": 50,
            "targeting": {"condition": {"trait": "plan", "op": "eq", "value": "pro"}},
        },
        publish="true",
    )
    await admin_post(
        harness,
        "/v1/content",
        {
            "id": "bonjour",
            "type": "banner",
            "placements": ["home-hero"],
            "priority": 40,
            "locale": "fr",
        },
        publish="true",
    )
    fans = await harness.client.get("/v1/content/home-hero", params={"segments": "shoe-fans,vip"})
    assert fans.status_code == 200, fans.text
    assert fans.json() == {
        "placement": "home-hero",
        "segments": ["shoe-fans", "vip"],
        "locale": None,
        "items": [
            {
                "id": "shoe-banner",
                "version": 1,
                "variant": None,
                "content": {"title": "New trail shoes"},
            }
        ],
        "fallback": False,
    }
    etag = fans.headers["etag"]
    assert fans.headers["cache-control"].startswith("public, max-age=60")
    assert "Accept-Language" in fans.headers["vary"]
    # the same combination in another order is the same answer
    again = await harness.client.get("/v1/content/home-hero", params={"segments": "vip,shoe-fans"})
    assert again.headers["etag"] == etag
    not_modified = await harness.client.get(
        "/v1/content/home-hero",
        params={"segments": "vip,shoe-fans"},
        headers={"if-none-match": f"W/{etag}"},
    )
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag

    nobody = (await harness.client.get("/v1/content/home-hero")).json()
    # the condition needs a profile: never in an edge answer
    assert [i["id"] for i in nobody["items"]] == ["everyone"]
    french = await harness.client.get(
        "/v1/content/home-hero", headers={"accept-language": "fr-FR,fr;q=0.9"}
    )
    assert french.json()["locale"] == "fr-FR" and french.json()["items"][0]["id"] == "bonjour"
    assert french.headers["etag"] != etag

    # a publication changes the answer and its ETag at once (this process's cache reloads)
    await admin_post(
        harness,
        "/v1/content/items/shoe-banner/rollback",
        {"version": 1},
    )
    await harness.client.patch(
        "/v1/content/items/shoe-banner",
        json={"fields": {"title": "Trail shoes: 20% off"}},
        headers=harness.admin,
        params={"publish": "true"},
    )
    changed = await harness.client.get(
        "/v1/content/home-hero", params={"segments": "shoe-fans"}, headers={"if-none-match": etag}
    )
    assert changed.status_code == 200
    assert changed.json()["items"][0]["content"] == {"title": "Trail shoes: 20% off"}

    missing = await harness.client.get("/v1/content/nowhere")
    assert_error(missing, 404, "placement_not_found")
    # the literal routes are not placements
    assert (
        await harness.client.get("/v1/content/export", headers=harness.admin)
    ).status_code == 200


async def test_products_are_learned_from_events(harness: Harness, clock: FrozenClock) -> None:
    viewed = {
        "type": "track",
        "userId": "u1",
        "event": "Product Viewed",
        "properties": {
            "product_id": "sku-1",
            "name": "Trail shoe",
            "category": "shoes",
            "price": 89.5,
        },
    }
    ordered = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {
            "order_id": "o1",
            "products": [
                {"product_id": "sku-1", "url": "/p/sku-1"},
                {"sku": "sku-2", "name": "Sock", "category": "socks"},
                {"name": "no id: not a product"},
            ],
        },
    }
    response = await harness.client.post(
        "/v1/batch", json={"batch": [viewed, viewed, ordered]}, headers=harness.auth
    )
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    listed = await harness.client.get(
        "/v1/content", params={"type": "product"}, headers=harness.admin
    )
    products = {item["id"]: item for item in listed.json()["data"]}
    assert sorted(products) == ["sku-1", "sku-2"]
    shoe = products["sku-1"]
    assert shoe["status"] == "published" and shoe["origin"] == "events" and shoe["version"] == 1
    assert shoe["fields"] == {
        "name": "Trail shoe",
        "category": "shoes",
        "price": 89.5,
        "url": "/p/sku-1",
    }
    # the same facts again write nothing; a new price writes a version
    await harness.client.post("/v1/batch", json={"batch": [viewed]}, headers=harness.auth)
    await harness.services.worker.run(until_idle=True)
    assert (await harness.client.get("/v1/content/items/sku-1", headers=harness.admin)).json()[
        "version"
    ] == 1
    clock.advance(3600)  # new facts are taken at most once an hour
    cheaper = {**viewed, "properties": {**viewed["properties"], "price": 79.0}}
    await harness.client.post("/v1/batch", json={"batch": [cheaper]}, headers=harness.auth)
    await harness.services.worker.run(until_idle=True)
    shoe = (await harness.client.get("/v1/content/items/sku-1", headers=harness.admin)).json()
    assert (
        shoe["version"] == 2 and shoe["publishedVersion"] == 2 and shoe["fields"]["price"] == 79.0
    )


async def test_recommendations_placement_follows_what_the_user_viewed(harness: Harness) -> None:
    await shop(harness)
    await admin_post(
        harness,
        "/v1/placements",
        {"id": "recs", "defaultItem": "generic", "strategy": "recommendations", "limit": 3},
    )

    def viewed(user: str, product: str, category: str = "shoes") -> dict[str, Any]:
        return {
            "type": "track",
            "userId": user,
            "event": "Product Viewed",
            "properties": {"product_id": product, "name": product.title(), "category": category},
        }

    bought = {
        "type": "track",
        "userId": "carol",
        "event": "Order Completed",
        "properties": {"order_id": "o1", "products": [{"product_id": "sku-9", "category": "hats"}]},
    }
    batch = [
        viewed("alice", "sku-1"),
        viewed("alice", "sku-2"),
        viewed("bob", "sku-1"),
        viewed("bob", "sku-2"),
        viewed("dave", "sku-9", "hats"),
        viewed("erin", "sku-9", "hats"),
        viewed("carol", "sku-1"),
        bought,
    ]
    response = await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)

    decided = await decide(harness, {"userId": "carol", "placements": [{"id": "recs"}]})
    placement = decided["placements"]["recs"]
    ids = [item["id"] for item in placement["items"]]
    assert placement["strategy"] == "recommendations" and placement["fallback"] is False
    # viewed with sku-1 by others: recommended because carol viewed sku-1
    assert "sku-2" in ids
    assert placement["trace"]["matched"]["sku-2"]["recommendation"]["anchor"] == "sku-1"
    # what carol viewed or bought is left out by the recommender
    assert "sku-1" not in ids and "sku-9" not in ids
    # a placement that shows seen items again still never offers what was bought
    await harness.client.patch(
        "/v1/placements/recs",
        json={"strategy": {"name": "recommendations", "params": {"excludeSeen": False}}},
        headers=harness.admin,
    )
    again = await decide(harness, {"userId": "carol", "placements": [{"id": "recs"}]})
    again_ids = [item["id"] for item in again["placements"]["recs"]["items"]]
    assert "sku-9" not in again_ids
    assert {"id": "sku-9", "reason": "already_bought"} in again["placements"]["recs"]["trace"][
        "excluded"
    ]


async def test_segment_entry_reaches_the_next_decision_through_the_cache(
    harness: Harness, clock: FrozenClock
) -> None:
    await shop(harness)
    await identify(harness, "u2", {"favourite": "hats"})
    first = (await decide(harness, hero("u2")))["placements"]["home-hero"]
    assert first["items"][0]["id"] == "everyone"
    profile_id = (await decide(harness, hero("u2")))["trace"]["profileId"]
    cached = await harness.services.cache.get(f"facts:{profile_id}")
    assert cached is not None and b"shoe-fans" not in cached
    # the user changes (later: traits are last-writer-wins by event time); the worker's
    # batch invalidates the cached facts with the profile
    clock.advance(60)
    await identify(harness, "u2", {"favourite": "shoes"})
    whole = await decide(harness, hero("u2"))
    after = whole["placements"]["home-hero"]
    assert after["items"][0]["id"] == "shoe-banner", (
        whole["trace"],
        harness.services.segments.profile_segments("u2"),
        await harness.services.cache.get(f"facts:{profile_id}"),
    )
