"""The webhook routes through the real ASGI app over real SQLite, with a real HTTP receiver:
create (the secret once), list, show, delete, the delivery log with its pages and filters,
retrying a failed delivery, roles, the 400s, 404s and 409s; and end to end, the scheduled
``content-webhooks`` job of a started runtime sending a signed delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from personify.clock import FrozenClock
from personify.content.webhooks import enqueue_event, verify_signature
from tests.api import Harness, assert_error, running_app
from tests.content.receiver import Receiver, receiving

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
READ_KEY = "pk_test-read-only"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def harness(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", clock=clock, content_webhook_max_attempts=2) as h:
        h.services.api_keys.create("reader", "read", secret=READ_KEY)
        yield h


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as started:
        yield started


async def create(harness: Harness, url: str, **fields: Any) -> dict[str, Any]:
    response = await harness.client.post(
        "/v1/webhooks", json={"url": url, **fields}, headers=harness.admin
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def get(harness: Harness, path: str, **params: Any) -> Any:
    response = await harness.client.get(path, params=params, headers=harness.admin)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def publish(harness: Harness, item_id: str) -> int:
    """Deliveries as the catalog writes them when it publishes ``item_id``."""
    services = harness.services
    with services.db.begin() as conn:
        return enqueue_event(
            conn, "content.published", item_id, 1, {"type": "banner"}, now=services.clock.now()
        )


async def deliver(harness: Harness) -> dict[str, int]:
    return await asyncio.to_thread(harness.services.webhook_deliverer.deliver_due)


async def test_webhooks_are_created_listed_shown_and_deleted(
    harness: Harness, receiver: Receiver
) -> None:
    created = await create(harness, f"{receiver.url}/purge", events=["content.unpublished"])
    assert set(created) == {"id", "url", "events", "active", "createdAt", "secret"}
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["content.unpublished"] and created["active"] is True
    assert created["createdAt"] == START.isoformat()
    every = await create(harness, "https://cms.example.com/hook")
    assert every["events"] == ["content.published", "content.unpublished"]

    listing = (await get(harness, "/v1/webhooks"))["data"]
    assert [w["id"] for w in listing] == [created["id"], every["id"]]
    shown = await get(harness, f"/v1/webhooks/{created['id']}")
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    # the secret is in the creating answer only
    assert all("secret" not in w for w in listing)

    deleted = await harness.client.delete(f"/v1/webhooks/{every['id']}", headers=harness.admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["active"] is False
    assert [w["id"] for w in (await get(harness, "/v1/webhooks"))["data"]] == [created["id"]]
    with_deleted = await get(harness, "/v1/webhooks", deleted="true")
    assert [w["active"] for w in with_deleted["data"]] == [True, False]
    assert (await get(harness, f"/v1/webhooks/{every['id']}"))["active"] is False
    # nothing is told to a deleted webhook
    assert publish(harness, "banner") == 0
    assert await deliver(harness) == {
        "due": 0,
        "delivered": 0,
        "retrying": 0,
        "failed": 0,
        "skipped": 0,
    }


async def test_a_webhook_secret_is_rotated_with_an_overlap(harness: Harness) -> None:
    created = await create(harness, "https://cms.example.com/hook")
    path = f"/v1/webhooks/{created['id']}/rotate"
    rotated = await harness.client.post(path, json={"overlapHours": 2}, headers=harness.admin)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["id"] == created["id"] and body["secret"].startswith("whsec_")
    assert body["secret"] != created["secret"]
    assert harness.services.webhooks.secret(created["id"]) == body["secret"]
    bad = await harness.client.post(path, json={"overlapHours": -1}, headers=harness.admin)
    assert_error(bad, 400, "invalid_parameter")
    await harness.client.delete(f"/v1/webhooks/{created['id']}", headers=harness.admin)
    gone = await harness.client.post(path, json={}, headers=harness.admin)
    assert_error(gone, 404, "webhook_not_found")


async def test_bad_webhooks_are_refused_with_the_reason(harness: Harness) -> None:
    async def refused(body: Any, status: int, code: str) -> None:
        response = await harness.client.post("/v1/webhooks", json=body, headers=harness.admin)
        assert_error(response, status, code)

    await refused({"url": "https://user:pw@example.com/hook"}, 400, "invalid_url")
    await refused({"url": "https://example.com/x#y"}, 400, "invalid_url")
    await refused({"url": "http:///no-host"}, 400, "invalid_url")
    await refused({"url": "ftp://example.com/hook"}, 400, "invalid_parameter")
    await refused({"url": "https://example.com/" + "x" * 2000}, 400, "invalid_parameter")
    await refused(
        {"url": "https://example.com/", "events": ["content.deleted"]}, 400, "invalid_parameter"
    )
    await refused({"url": "https://example.com/", "events": []}, 400, "invalid_event")
    await refused({"url": "https://example.com/", "secret": "mine"}, 400, "invalid_parameter")
    await refused(["https://example.com/"], 400, "invalid_parameter")
    assert (await get(harness, "/v1/webhooks"))["data"] == []

    for method, path in (
        ("GET", "/v1/webhooks/41"),
        ("DELETE", "/v1/webhooks/41"),
        ("GET", "/v1/webhooks/41/deliveries"),
        ("POST", "/v1/webhooks/41/deliveries/1/retry"),
    ):
        response = await harness.client.request(method, path, headers=harness.admin)
        assert_error(response, 404, "webhook_not_found")


async def test_reads_need_a_key_and_writes_the_admin_role(harness: Harness) -> None:
    reader = {"Authorization": f"Bearer {READ_KEY}"}
    assert_error(await harness.client.get("/v1/webhooks"), 401, "missing_api_key")
    assert (await harness.client.get("/v1/webhooks", headers=reader)).status_code == 200
    response = await harness.client.post(
        "/v1/webhooks", json={"url": "https://example.com/"}, headers=reader
    )
    assert_error(response, 403, "forbidden")
    webhook = await create(harness, "https://example.com/")
    assert_error(
        await harness.client.delete(f"/v1/webhooks/{webhook['id']}", headers=reader),
        403,
        "forbidden",
    )


async def test_the_delivery_log_shows_tries_and_a_failed_delivery_is_retried(
    harness: Harness, clock: FrozenClock, receiver: Receiver
) -> None:
    webhook = await create(harness, f"{receiver.url}/hook")
    other = await create(harness, f"{receiver.url}/other")
    for n in range(3):
        publish(harness, f"item-{n}")
    receiver.answer(*[500] * 12)
    assert (await deliver(harness))["retrying"] == 6
    clock.advance(10)
    # max attempts is 2 in this harness: the second refusal fails them
    assert (await deliver(harness))["failed"] == 6

    path = f"/v1/webhooks/{webhook['id']}/deliveries"
    page = await get(harness, path, limit=2)
    assert page["webhook"] == webhook["id"] and len(page["data"]) == 2
    newest = page["data"][0]
    assert newest["itemId"] == "item-2" and newest["status"] == "failed"
    assert newest["attempts"] == 2 and newest["lastStatusCode"] == 500
    assert newest["lastError"] == "HTTP 500: refused with 500"
    assert newest["nextAttemptAt"] is None and newest["deliveredAt"] is None
    assert newest["payload"]["data"] == {"itemId": "item-2", "itemVersion": 1, "type": "banner"}
    rest = await get(harness, path, limit=2, before=page["next"])
    assert [d["itemId"] for d in rest["data"]] == ["item-0"] and rest["next"] is None
    assert (await get(harness, path, status="pending"))["data"] == []
    assert len((await get(harness, path, status="failed"))["data"]) == 3
    assert len((await get(harness, path, after=newest["id"] - 1))["data"]) == 1

    retry = f"{path}/{newest['id']}/retry"
    again = await harness.client.post(retry, headers=harness.admin)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "pending"
    assert again.json()["nextAttemptAt"] == clock.now().isoformat()
    assert_error(
        await harness.client.post(retry, headers=harness.admin), 409, "delivery_not_failed"
    )
    assert (await deliver(harness))["delivered"] == 1
    delivered = (await get(harness, path, status="delivered"))["data"]
    assert [d["id"] for d in delivered] == [newest["id"]]
    assert delivered[0]["attempts"] == 3 and delivered[0]["lastError"] is None
    last = receiver.requests[-1]
    assert last.path == "/hook" and last.json() == delivered[0]["payload"]
    # another webhook's delivery is not found under this one
    foreign = (await get(harness, f"/v1/webhooks/{other['id']}/deliveries"))["data"][0]
    assert_error(
        await harness.client.post(f"{path}/{foreign['id']}/retry", headers=harness.admin),
        404,
        "delivery_not_found",
    )
    await harness.client.delete(f"/v1/webhooks/{other['id']}", headers=harness.admin)
    assert_error(
        await harness.client.post(
            f"/v1/webhooks/{other['id']}/deliveries/{foreign['id']}/retry", headers=harness.admin
        ),
        409,
        "webhook_inactive",
    )


def test_the_routes_are_in_the_openapi_document(tmp_path: Path) -> None:
    from personify.api.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path / "data"))
    document = app.app.openapi_schema.to_schema()  # type: ignore[attr-defined]
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/v1/webhooks"])
    assert {"get", "delete"} <= set(paths["/v1/webhooks/{webhook_id}"])
    assert "get" in paths["/v1/webhooks/{webhook_id}/deliveries"]
    assert "post" in paths["/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"]
    created = paths["/v1/webhooks"]["post"]["responses"]
    assert "201" in created and "400" in created


async def test_serve_sends_a_signed_delivery_on_its_schedule(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running_app(
        tmp_path / "data",
        run_worker=True,
        run_lake_sink=False,
        content_webhook_interval_s=0.05,
    ) as harness:
        webhook = await create(harness, f"{receiver.url}/cache")
        publish(harness, "spring-banner")
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "the content-webhooks job sent nothing"
            await asyncio.sleep(0.02)
        [got] = receiver.requests
        assert verify_signature(
            webhook["secret"], got.headers["personify-signature"], got.body, now=time.time()
        )
        assert got.json()["data"]["itemId"] == "spring-banner"
        path = f"/v1/webhooks/{webhook['id']}/deliveries"
        while (await get(harness, path))["data"][0]["status"] != "delivered":
            assert time.monotonic() < deadline, "the delivery was never recorded"
            await asyncio.sleep(0.02)
        scheduler = harness.services.scheduler
        assert scheduler is not None
        assert scheduler.statuses["content-webhooks"].failures == 0
