"""The content catalog's routes through the real ASGI app: items with versions, publishing,
rollback, placements, 422s that point, roles, import and export, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api import Harness, assert_error, running_app

BANNER = {
    "id": "winter-sale",
    "type": "banner",
    "fields": {"title": "Winter sale"},
    "tags": ["sale"],
    "priority": 10,
    "schedule": {
        "start": "2026-12-01T00:00",
        "end": "2027-01-06T00:00",
        "timezone": "Europe/Paris",
    },
    "locale": "en",
    "frequencyCap": {"max": 3, "window": "1d"},
    "variants": [{"key": "red", "fields": {"colour": "red"}, "weight": 1}],
}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


async def post(harness: Harness, path: str, body: Any, **params: Any) -> dict[str, Any]:
    response = await harness.client.post(path, json=body, headers=harness.admin, params=params)
    assert response.status_code in (200, 201), response.text
    document: dict[str, Any] = response.json()
    return document


async def test_item_life_over_http(harness: Harness) -> None:
    created = await post(harness, "/v1/content", BANNER)
    assert created["status"] == "draft" and created["version"] == 1
    assert created["variants"] == BANNER["variants"]
    assert created["frequencyCap"] == {"max": 3, "window": "1d"}
    assert created["targeting"] is None and created["publishedAt"] is None

    published = await post(harness, "/v1/content/items/winter-sale/publish", None)
    assert published["status"] == "published" and published["publishedVersion"] == 1

    changed = await harness.client.patch(
        "/v1/content/items/winter-sale",
        json={"fields": {"title": "Last days"}},
        headers=harness.admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and changed.json()["hasUnpublishedChanges"] is True

    versions = await harness.client.get(
        "/v1/content/items/winter-sale/versions", headers=harness.admin
    )
    assert [v["version"] for v in versions.json()["data"]] == [2, 1]
    first = await harness.client.get(
        "/v1/content/items/winter-sale/versions/1", headers=harness.admin
    )
    assert (
        first.json()["fields"] == {"title": "Winter sale"} and first.json()["change"] == "created"
    )

    rolled = await post(harness, "/v1/content/items/winter-sale/rollback", {"version": 1})
    assert rolled["version"] == 3 and rolled["publishedVersion"] == 3
    assert rolled["fields"] == {"title": "Winter sale"}

    listed = await harness.client.get(
        "/v1/content", params={"status": "published"}, headers=harness.admin
    )
    assert [item["id"] for item in listed.json()["data"]] == ["winter-sale"]

    archived = await harness.client.delete("/v1/content/items/winter-sale", headers=harness.admin)
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    gone = await harness.client.get("/v1/content", headers=harness.admin)
    assert gone.json() == {"data": [], "next": None}


async def test_invalid_item_is_a_422_with_pointers(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/content",
        json={
            "id": "x",
            "type": "banner",
            "targeting": {"condition": {"any": [{"feature": "orders.all", "op": "gte"}]}},
            "variants": [{"key": "a", "weight": -1}],
        },
        headers=harness.admin,
    )
    body = assert_error(response, 422, "invalid_content")
    pointers = {e["pointer"] for e in body["details"]["errors"]}
    # a missing operand is reported at its leaf, as the segments API does
    assert pointers == {"/targeting/condition/any/0", "/variants/0/weight"}
    missing = await harness.client.post("/v1/content", json={"id": "x"}, headers=harness.admin)
    assert (
        assert_error(missing, 422, "invalid_content")["details"]["errors"][0]["pointer"] == "/type"
    )
    bad_id = await harness.client.post(
        "/v1/content", json={"id": "a b", "type": "banner"}, headers=harness.admin
    )
    assert_error(bad_id, 400, "invalid_id")
    not_json = await harness.client.post(
        "/v1/content",
        content=b"{nope",
        headers={**harness.admin, "content-type": "application/json"},
    )
    assert not_json.status_code == 400
    unknown = await harness.client.get("/v1/content/items/none", headers=harness.admin)
    assert_error(unknown, 404, "content_not_found")
    bad_status = await harness.client.get(
        "/v1/content", params={"status": "live"}, headers=harness.admin
    )
    assert_error(bad_status, 400, "invalid_parameter")


async def test_placements_over_http(harness: Harness) -> None:
    await post(harness, "/v1/content", BANNER, publish="true")
    placement = await post(
        harness,
        "/v1/placements",
        {
            "id": "home-hero",
            "description": "hero",
            "defaultItem": "winter-sale",
            "strategy": "affinity",
        },
    )
    assert placement["strategy"] == {"name": "affinity", "params": {}}
    assert placement["status"] == "active" and placement["version"] == 1
    changed = await harness.client.patch(
        "/v1/placements/home-hero", json={"limit": 3}, headers=harness.admin
    )
    assert changed.json()["limit"] == 3 and changed.json()["version"] == 2
    versions = await harness.client.get("/v1/placements/home-hero/versions", headers=harness.admin)
    assert [v["version"] for v in versions.json()["data"]] == [2, 1]
    in_use = await harness.client.delete("/v1/content/items/winter-sale", headers=harness.admin)
    assert assert_error(in_use, 409, "content_in_use")["details"] == {"usedBy": ["home-hero"]}
    invalid = await harness.client.post(
        "/v1/placements",
        json={"id": "side", "strategy": {"name": "recommendations", "params": {"source": "magic"}}},
        headers=harness.admin,
    )
    errors = assert_error(invalid, 422, "invalid_placement")["details"]["errors"]
    assert errors[0]["pointer"] == "/strategy/params/source"
    archived = await harness.client.delete("/v1/placements/home-hero", headers=harness.admin)
    assert archived.json()["status"] == "archived"
    listed = await harness.client.get("/v1/placements", headers=harness.admin)
    assert listed.json() == {"data": []}
    everything = await harness.client.get(
        "/v1/placements", params={"archived": "true"}, headers=harness.admin
    )
    assert [p["id"] for p in everything.json()["data"]] == ["home-hero"]


async def test_import_and_export(harness: Harness) -> None:
    report = await post(
        harness,
        "/v1/content/import",
        {
            "items": [BANNER, {"id": "broken", "type": "banner", "tags": "sale"}],
            "placements": [{"id": "home-hero", "defaultItem": "winter-sale"}],
        },
        publish="true",
    )
    assert report["items"]["created"] == 1 and report["items"]["refused"] == 1
    assert report["items"]["errors"] == [
        {
            "index": 1,
            "id": "broken",
            "errors": [
                {
                    "pointer": "/items/1/tags",
                    "code": "invalid_type",
                    "message": "must be a list of text",
                }
            ],
        }
    ]
    assert report["placements"]["created"] == 1
    exported = await harness.client.get("/v1/content/export", headers=harness.admin)
    body = exported.json()
    assert [item["id"] for item in body["items"]] == ["winter-sale"]
    assert body["items"][0]["status"] == "published"
    assert body["placements"][0]["defaultItem"] == "winter-sale"


async def test_roles(harness: Harness) -> None:
    reader_secret = "pk_test-reader-secret"
    harness.services.api_keys.create("reader", "read", secret=reader_secret)
    reader = {"Authorization": f"Bearer {reader_secret}"}
    refused = await harness.client.post("/v1/content", json=BANNER, headers=reader)
    assert refused.status_code == 403
    assert (await harness.client.get("/v1/content", headers=reader)).status_code == 200
    anonymous = await harness.client.get("/v1/placements")
    assert_error(anonymous, 401, "missing_api_key")


async def test_routes_are_in_the_openapi_document(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/v1/content",
        "/v1/content/items/{item_id}",
        "/v1/content/items/{item_id}/publish",
        "/v1/content/items/{item_id}/rollback",
        "/v1/content/export",
        "/v1/content/import",
        "/v1/placements",
        "/v1/placements/{placement_id}",
    ):
        assert path in paths, path
    assert "422" in paths["/v1/content"]["post"]["responses"]
