"""The admin API: Bearer API keys, dead letters with pagination, log lag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, assert_error, running_app


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", auth_cache_ttl_s=0) as h:
        yield h


async def dead_letter(harness: Harness, count: int) -> None:
    """Send ``count`` events without an identity, so each is dead-lettered."""
    batch = [{"type": "track", "event": f"E{i}", "messageId": f"bad-{i}"} for i in range(count)]
    response = await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    assert response.json()["rejected"] == count


@pytest.mark.parametrize("path", ["/v1/failed-events", "/v1/log"])
async def test_admin_routes_need_a_bearer_key(harness: Harness, path: str) -> None:
    for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjo="}]:
        response = await harness.client.get(path, headers=headers)
        assert_error(response, 401, "missing_api_key")


@pytest.mark.parametrize("path", ["/v1/failed-events", "/v1/log"])
async def test_admin_routes_refuse_an_unknown_key(harness: Harness, path: str) -> None:
    response = await harness.client.get(path, headers={"Authorization": "Bearer pk_unknown"})
    assert_error(response, 401, "invalid_api_key")


async def test_a_write_key_is_not_an_api_key(harness: Harness) -> None:
    response = await harness.client.get(
        "/v1/failed-events", headers={"Authorization": f"Bearer {harness.write_key}"}
    )
    assert_error(response, 401, "invalid_api_key")


async def test_a_read_role_key_can_read(harness: Harness) -> None:
    _key, secret = harness.services.api_keys.create("reader", "read")
    await dead_letter(harness, 1)
    headers = {"Authorization": f"Bearer {secret}"}
    response = await harness.client.get("/v1/failed-events", headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    response = await harness.client.get("/v1/log", headers=headers)
    assert response.status_code == 200, response.text


async def test_a_revoked_api_key_is_refused(harness: Harness) -> None:
    key, secret = harness.services.api_keys.create("temp", "read")
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await harness.client.get("/v1/log", headers=headers)).status_code == 200
    harness.services.api_keys.revoke(key.id)
    assert_error(await harness.client.get("/v1/log", headers=headers), 401, "invalid_api_key")


async def test_failed_events_lists_dead_letters_with_their_reason(harness: Harness) -> None:
    await dead_letter(harness, 2)
    response = await harness.client.get("/v1/failed-events", headers=harness.admin)
    body = response.json()
    assert body["next"] is None
    first, second = body["data"]
    assert first["id"] < second["id"]
    assert [first["messageId"], second["messageId"]] == ["bad-0", "bad-1"]
    assert first["code"] == "missing_identity"
    assert first["stage"] == "ingest"
    assert first["sourceId"] == harness.source.id
    assert "userId" in first["reason"]
    assert first["payload"] == {"type": "track", "event": "E0", "messageId": "bad-0"}
    assert first["attempts"] == 1
    assert first["createdAt"]
    assert first["replayedAt"] is None


async def test_failed_events_pages_with_limit_and_after(harness: Harness) -> None:
    await dead_letter(harness, 5)
    seen: list[str] = []
    pages = 0
    after = 0
    while True:
        response = await harness.client.get(
            "/v1/failed-events", params={"limit": 2, "after": after}, headers=harness.admin
        )
        assert response.status_code == 200
        body = response.json()
        pages += 1
        assert len(body["data"]) <= 2
        seen.extend(item["messageId"] for item in body["data"])
        if body["next"] is None:
            break
        assert body["next"] == body["data"][-1]["id"]
        after = body["next"]
    assert seen == [f"bad-{i}" for i in range(5)]
    assert pages == 3


async def test_failed_events_filter_by_stage(harness: Harness) -> None:
    await dead_letter(harness, 2)
    response = await harness.client.get(
        "/v1/failed-events", params={"stage": "worker"}, headers=harness.admin
    )
    assert response.json() == {"data": [], "next": None}
    response = await harness.client.get(
        "/v1/failed-events", params={"stage": "ingest"}, headers=harness.admin
    )
    assert len(response.json()["data"]) == 2


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
    ],
)
async def test_invalid_query_parameters_are_400(
    harness: Harness, params: dict[str, str], parameter: str
) -> None:
    response = await harness.client.get("/v1/failed-events", params=params, headers=harness.admin)
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"] == {"parameter": parameter}


async def test_log_reports_the_lag_of_a_group(harness: Harness) -> None:
    batch = [{"type": "track", "userId": "u1", "event": f"E{i}"} for i in range(7)]
    await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    response = await harness.client.get("/v1/log", headers=harness.admin)
    assert response.json() == {"group": "worker", "lag": 7}

    log = harness.services.log
    entries = await log.read("analytics", "c1", max_count=3, timeout_ms=0)
    await log.commit("analytics", "c1", entries)
    response = await harness.client.get(
        "/v1/log", params={"group": "analytics"}, headers=harness.admin
    )
    assert response.json() == {"group": "analytics", "lag": 4}


async def test_asking_for_a_lag_does_not_hold_back_retention(harness: Harness) -> None:
    batch = [{"type": "track", "userId": "u1", "event": f"E{i}"} for i in range(4)]
    await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    log = harness.services.log
    entries = await log.read("worker", "c1", max_count=10, timeout_ms=0)
    await log.commit("worker", "c1", entries)
    # an admin looking at a group nobody consumes must not register it as a consumer
    response = await harness.client.get("/v1/log", params={"group": "typo"}, headers=harness.admin)
    assert response.json() == {"group": "typo", "lag": 4}
    assert await log.truncate() == 4
