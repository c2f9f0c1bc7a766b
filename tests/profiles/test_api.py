"""The profile API through the real ASGI app: events in over HTTP, profiles out over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.api.app import create_app
from personify.runtime import Runtime
from tests.conftest import make_settings


class Api:
    """An httpx client on the app, with the worker driven by the test."""

    def __init__(self, services: Runtime, client: httpx.AsyncClient, admin: str, write: str):
        self.services = services
        self.client = client
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.write = (write, "")

    async def send(self, *events: dict[str, Any]) -> None:
        response = await self.client.post(
            "/v1/batch", json={"batch": list(events)}, auth=self.write
        )
        assert response.status_code == 200, response.text
        await self.services.worker.run(until_idle=True)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.admin, params=params)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(
        tmp_path / "data",
        run_worker=False,
        worker_poll_timeout_ms=50,
        cache_invalidation_ttl_s=0.05,
    )
    services = Runtime.build(settings)
    app = create_app(settings, services=services)
    await services.start()
    _, write_key = services.sources.create("web")
    _, admin_key = services.api_keys.create("admin", "admin")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Api(services, client, admin_key, write_key)
    await services.close()


def at(minutes_ago: float) -> str:
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return moment.isoformat().replace("+00:00", "Z")


SCRIPT = [
    {
        "type": "page",
        "anonymousId": "anon-1",
        "properties": {"category": "running"},
        "timestamp": at(30),
        "messageId": "e1",
        "context": {"campaign": {"source": "newsletter", "name": "spring"}},
    },
    {
        "type": "track",
        "anonymousId": "anon-1",
        "event": "Product Viewed",
        "properties": {"category": "shoes"},
        "timestamp": at(28),
        "messageId": "e2",
    },
    {
        "type": "identify",
        "anonymousId": "anon-1",
        "userId": "user-ada",
        "traits": {"name": "Ada", "email": "ada@example.com"},
        "timestamp": at(25),
        "messageId": "e3",
    },
    {
        "type": "track",
        "userId": "user-ada",
        "event": "Order Completed",
        "properties": {"revenue": 89.5, "products": [{"category": "shoes"}]},
        "timestamp": at(20),
        "messageId": "e4",
    },
]


async def test_a_profile_by_any_id_with_merged_ids_traits_features_and_consent(api: Api) -> None:
    await api.send(*SCRIPT)
    by_user = await api.get("/v1/profiles/user-ada")
    by_device = await api.get("/v1/profiles/anon-1")
    assert by_user.status_code == by_device.status_code == 200
    profile = by_user.json()
    assert by_device.json()["profileId"] == profile["profileId"] == "user-ada"
    assert profile["ids"] == {
        "userIds": ["user-ada"],
        "anonymousIds": ["anon-1"],
        "previousIds": [],
    }
    assert profile["traits"]["name"] == "Ada"
    assert profile["traits"]["email"].startswith("hmac-sha256:")  # hashed at ingest
    features = profile["features"]
    assert features["events_total"] == 4
    assert features["orders"]["all"] == 1
    assert features["revenue"]["all"] == 89.5
    assert features["sessions"]["count"] == 1
    assert list(features["affinities"]["product_category"]) == ["shoes"]
    assert features["context"]["first_touch"] == {"source": "newsletter", "name": "spring"}
    assert profile["consent"]["personalizationAllowed"] is True
    assert profile["version"] == 1
    assert profile["lastUpdated"]


async def test_a_denied_consent_keeps_the_profile_but_flags_it(api: Api) -> None:
    await api.send(*SCRIPT)
    await api.send(
        {
            "type": "track",
            "userId": "user-ada",
            "event": "Consent Updated",
            "timestamp": at(1),
            "context": {"consent": {"categoryPreferences": {"Personalization": False}}},
        }
    )
    profile = (await api.get("/v1/profiles/anon-1")).json()
    assert profile["consent"]["personalizationAllowed"] is False
    assert profile["consent"]["categoryPreferences"] == {"Personalization": False}
    assert profile["features"]["events_total"] == 5
    assert profile["traits"]["name"] == "Ada"


async def test_history_lists_versions_and_merges(api: Api) -> None:
    await api.send(*SCRIPT[:2])
    await api.send(*SCRIPT[2:])
    body = (await api.get("/v1/profiles/anon-1/history")).json()
    assert body["profileId"] == "user-ada"
    assert [(v["version"], v["kind"], v["messageIds"]) for v in body["data"]] == [
        (1, "merge", ["e3", "e4"])
    ]
    assert body["merges"][0]["from"] == "anon-1"
    assert body["merges"][0]["ids"] == ["anon-1"]
    device = (await api.get("/v1/profiles/anon-1", as_of=datetime.now(UTC).isoformat())).json()
    assert device["profileId"] == "user-ada"


async def test_events_timeline_is_paginated_newest_first(api: Api) -> None:
    await api.send(*SCRIPT)
    first = (await api.get("/v1/profiles/user-ada/events", limit=3)).json()
    assert [e["messageId"] for e in first["data"]] == ["e4", "e3", "e2"]
    assert first["next"]
    rest = (await api.get("/v1/profiles/user-ada/events", limit=3, cursor=first["next"])).json()
    assert [e["messageId"] for e in rest["data"]] == ["e1"]
    assert rest["next"] is None
    bad = await api.get("/v1/profiles/user-ada/events", cursor="nonsense")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_parameter"


async def test_as_of_reads_the_profile_as_it_was(api: Api) -> None:
    await api.send(*SCRIPT[:2])
    between = datetime.now(UTC)
    await api.send(*SCRIPT[2:])
    then = (await api.get("/v1/profiles/user-ada", as_of=between.isoformat())).json()
    assert then["features"]["events_total"] == 2
    assert then["ids"]["userIds"] == []
    assert then["version"] is None
    before = await api.get("/v1/profiles/user-ada", as_of="2000-01-01T00:00:00Z")
    assert before.status_code == 404
    garbage = await api.get("/v1/profiles/user-ada", as_of="yesterday")
    assert garbage.status_code == 400


async def test_errors_are_json_and_an_api_key_is_required(api: Api) -> None:
    missing = await api.get("/v1/profiles/nobody")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "profile_not_found"
    anonymous = await api.client.get("/v1/profiles/nobody")
    assert anonymous.status_code == 401
    wrong = await api.client.get("/v1/profiles/nobody", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (await api.get("/v1/profiles/x/history", limit=0)).status_code == 400


async def test_worker_status_reports_lag_and_throughput(api: Api) -> None:
    await api.send(*SCRIPT)
    body = (await api.get("/v1/worker/status")).json()
    assert body["group"] == "worker"
    assert body["lag"] == 0
    assert body["inProcess"] is None  # this test drives the worker itself
    [worker] = body["workers"]
    assert worker["eventsApplied"] == 4
    assert set(body["cache"]) == {"hits", "misses", "fills", "invalidations"}


async def test_the_profile_document_carries_the_served_models_predictions(api: Api) -> None:
    from personify.predict.registry import ModelVersion
    from tests.predict.test_stage import churn_model

    await api.send(
        *[
            {
                "type": "track",
                "userId": "runner",
                "event": "Product Viewed",
                "timestamp": at(10 - i),
                "messageId": f"p{i}",
            }
            for i in range(3)
        ]
    )
    # nothing served: the document says so with an empty section
    first = (await api.get("/v1/profiles/runner")).json()
    assert first["predictions"] == {}
    models = api.services.models
    version: ModelVersion = models.register(
        churn_model(falling=True),
        as_of=datetime.now(UTC),
        definitions="test",
        lineage_id=None,
        report={"kind": "churn"},
        status="kept",
    )
    models.promote(version.id)
    await api.send(
        {
            "type": "track",
            "userId": "runner",
            "event": "Product Viewed",
            "timestamp": at(1),
            "messageId": "p9",
        }
    )
    document = (await api.get("/v1/profiles/runner")).json()
    churn = document["predictions"]["churn"]
    assert 0 < churn["probability"] < 1 and churn["version"] == 1 and churn["coldStart"] is False
    assert churn["model"] == "churn:30d:*" and churn["reasons"]
    assert all("churn risk" in reason["text"] for reason in churn["reasons"])
    # a past version of the profile has no predictions to show
    past = (await api.get("/v1/profiles/runner", as_of=at(5))).json()
    assert "predictions" not in past
