"""The audit log through the real ASGI app: changes, denials and per-user reads are recorded
with who, what, which resource and the outcome; other reads, decisions and events are not;
``GET /v1/audit`` filters, exports and verifies; a failed audit write leaves the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar

from personify.api import profiles as profile_routes
from personify.api.app import create_app
from personify.api.audit import NDJSON, AuditMiddleware
from personify.auth.tables import audit_log
from personify.privacy.suppression import id_hash
from personify.runtime import Runtime
from tests.api import Harness, assert_error, running_app
from tests.conftest import make_settings

EXPERIMENT = {
    "key": "hero-test",
    "variants": [{"key": "control", "weight": 0.5}, {"key": "bold", "weight": 0.5}],
}


@pytest.fixture
def per_user_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /v1/profiles/{id}`` marked as a per-user read (as the route table marks it)."""
    monkeypatch.setitem(profile_routes.profile.opt, "per_user", True)


@pytest.fixture
async def harness(tmp_path: Path, per_user_profile: None) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as started:
        yield started


def entries(harness: Harness) -> list[dict[str, Any]]:
    """Every audit record, oldest first, as the API shows them."""
    return [e.to_document() for e in harness.services.audit.query(limit=1000)]


def admin_key_id(harness: Harness) -> str:
    key = harness.services.api_keys.resolve(harness.admin_secret)
    assert key is not None
    return key.id


async def test_a_change_is_recorded_with_the_keys_id_role_and_outcome(harness: Harness) -> None:
    response = await harness.client.post("/v1/experiments", json=EXPERIMENT, headers=harness.admin)
    assert response.status_code == 201, response.text
    (entry,) = entries(harness)
    assert entry["actorKind"] == "api_key"
    assert entry["actor"] == admin_key_id(harness)
    assert entry["role"] == "admin"
    assert entry["details"] == {"name": "test-admin"}
    assert entry["action"] == "POST /v1/experiments"
    assert entry["resource"] == "/v1/experiments"
    assert (entry["status"], entry["outcome"]) == (201, "ok")
    assert entry["source"] == "127.0.0.1"
    # the path template is the action; the concrete path the resource
    response = await harness.client.patch(
        "/v1/experiments/hero-test", json={"name": "Hero"}, headers=harness.admin
    )
    assert response.status_code == 200, response.text
    response = await harness.client.patch(
        "/v1/experiments/missing", json={"name": "x"}, headers=harness.admin
    )
    assert response.status_code == 404
    changed, missing = entries(harness)[1:]
    assert changed["action"] == missing["action"] == "PATCH /v1/experiments/{key}"
    assert (changed["resource"], changed["outcome"]) == ("/v1/experiments/hero-test", "ok")
    assert (missing["resource"], missing["status"], missing["outcome"]) == (
        "/v1/experiments/missing",
        404,
        "failed",
    )
    assert harness.services.audit.verify().ok


async def test_denied_attempts_are_recorded_with_the_presented_prefix(harness: Harness) -> None:
    reader, secret = harness.services.api_keys.create("reader", "read")
    response = await harness.client.post(
        "/v1/experiments", json=EXPERIMENT, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 403, response.text
    response = await harness.client.post("/v1/experiments", json=EXPERIMENT)
    assert_error(response, 401, "missing_api_key")
    response = await harness.client.delete(
        "/v1/experiments/hero-test", headers={"Authorization": "Bearer pk_not-a-real-key"}
    )
    assert response.status_code == 401
    # a denied read is recorded too, per-user or not
    response = await harness.client.get(
        "/v1/experiments", headers={"Authorization": "Bearer pk_wrong"}
    )
    assert response.status_code == 401
    forbidden, anonymous, unknown, read = entries(harness)
    assert (forbidden["status"], forbidden["outcome"]) == (403, "denied")
    assert forbidden["actorKind"] == "api_key"
    # the scope guard knows the key it refused (its id); the role guard did not (its prefix)
    assert forbidden["actor"] in (reader.id, reader.prefix)
    assert reader.prefix == secret[:10]
    assert forbidden["action"] == "POST /v1/experiments"
    assert (anonymous["actorKind"], anonymous["actor"], anonymous["status"]) == (
        "anonymous",
        "anonymous",
        401,
    )
    assert (unknown["actor"], unknown["outcome"], unknown["resource"]) == (
        "pk_not-a-r",
        "denied",
        "/v1/experiments/hero-test",
    )
    assert (read["action"], read["actor"]) == ("GET /v1/experiments", "pk_wrong")


async def test_per_user_reads_are_recorded_and_other_reads_are_not(harness: Harness) -> None:
    response = await harness.client.get("/v1/experiments", headers=harness.admin)
    assert response.status_code == 200
    response = await harness.client.get("/v1/profiles/user-42", headers=harness.admin)
    assert response.status_code == 404, response.text
    (entry,) = entries(harness)
    assert entry["action"] == "GET /v1/profiles/{id}"
    # a person's id is recorded as its keyed hash: the audit log is never erased
    assert entry["resource"] == "/v1/profiles/" + id_hash(harness.services.hasher, "user-42")
    assert entry["actor"] == admin_key_id(harness)
    assert (entry["status"], entry["outcome"]) == (404, "failed")


async def test_per_user_reads_are_not_recorded_when_audit_reads_is_off(
    tmp_path: Path, per_user_profile: None
) -> None:
    async with running_app(tmp_path / "data", audit_reads=False) as harness:
        response = await harness.client.get("/v1/profiles/user-42", headers=harness.admin)
        assert response.status_code == 404
        assert entries(harness) == []
        # changes are always recorded
        response = await harness.client.post(
            "/v1/experiments", json=EXPERIMENT, headers=harness.admin
        )
        assert response.status_code == 201
        assert [e["action"] for e in entries(harness)] == ["POST /v1/experiments"]


async def test_events_and_decisions_are_not_recorded(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/track",
        json={"userId": "u1", "event": "Viewed", "messageId": "m-1"},
        headers=harness.auth,
    )
    assert response.status_code == 200, response.text
    response = await harness.client.post(
        "/v1/decide", json={"userId": "u1", "placements": ["hero"]}, headers=harness.admin
    )
    assert response.status_code < 500, response.text
    # refused decisions are not recorded either
    response = await harness.client.post(
        "/v1/decide", json={"userId": "u1"}, headers={"Authorization": "Bearer pk_wrong"}
    )
    assert response.status_code >= 400
    assert entries(harness) == []


async def test_the_audit_routes_filter_page_export_and_verify(harness: Harness) -> None:
    for number in range(3):
        response = await harness.client.post(
            "/v1/experiments", json={**EXPERIMENT, "key": f"e-{number}"}, headers=harness.admin
        )
        assert response.status_code == 201, response.text
    await harness.client.get("/v1/profiles/user-1", headers=harness.admin)
    await harness.client.post("/v1/experiments", json=EXPERIMENT)
    me = admin_key_id(harness)

    response = await harness.client.get("/v1/audit", headers=harness.admin)
    assert response.status_code == 200, response.text
    page = response.json()
    assert [e["id"] for e in page["data"]] == [1, 2, 3, 4, 5] and page["next"] is None
    response = await harness.client.get(
        "/v1/audit", params={"actor": me, "limit": 2}, headers=harness.admin
    )
    first = response.json()
    assert [e["id"] for e in first["data"]] == [1, 2] and first["next"] == 2
    response = await harness.client.get(
        "/v1/audit", params={"actor": me, "limit": 2, "after": 2}, headers=harness.admin
    )
    assert [e["id"] for e in response.json()["data"]] == [3, 4]
    response = await harness.client.get(
        "/v1/audit", params={"action": "GET /v1/profiles/{id}"}, headers=harness.admin
    )
    assert [e["resource"] for e in response.json()["data"]] == [
        "/v1/profiles/" + id_hash(harness.services.hasher, "user-1")
    ]
    response = await harness.client.get(
        "/v1/audit", params={"resource": "/v1/profiles/"}, headers=harness.admin
    )
    assert [e["id"] for e in response.json()["data"]] == [4]
    at = page["data"][2]["at"]
    response = await harness.client.get(
        "/v1/audit", params={"since": at, "until": page["data"][4]["at"]}, headers=harness.admin
    )
    assert [e["id"] for e in response.json()["data"]] == [3, 4]
    response = await harness.client.get("/v1/audit", params={"limit": 0}, headers=harness.admin)
    assert_error(response, 400, "invalid_parameter")

    response = await harness.client.get(
        "/v1/audit/export", params={"actor": me}, headers=harness.admin
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(NDJSON)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 3, 4]
    assert lines[1]["prevHash"] == lines[0]["hash"]
    assert lines == [e for e in page["data"] if e["actor"] == me]

    response = await harness.client.get("/v1/audit/verify", headers=harness.admin)
    assert response.status_code == 200
    report = response.json()
    assert report["ok"] is True and report["records"] == 5 and report["brokenId"] is None
    with harness.services.db.begin() as conn:
        conn.execute(audit_log.update().where(audit_log.c.id == 2).values(status=200))
    report = (await harness.client.get("/v1/audit/verify", headers=harness.admin)).json()
    assert (report["ok"], report["brokenId"], report["reason"]) == (False, 2, "altered")


async def test_the_audit_log_is_for_admins_only(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("reader", "read")
    for path in ("/v1/audit", "/v1/audit/export", "/v1/audit/verify"):
        response = await harness.client.get(path, headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 403, (path, response.text)
        response = await harness.client.get(path)
        assert_error(response, 401, "missing_api_key")
    assert {(e["action"], e["outcome"]) for e in entries(harness)} == {
        ("GET /v1/audit", "denied"),
        ("GET /v1/audit/export", "denied"),
        ("GET /v1/audit/verify", "denied"),
    }
    schema = (await harness.client.get("/openapi.json")).json()
    assert schema["paths"]["/v1/audit"]["get"]["tags"] == ["audit"]
    exported = schema["paths"]["/v1/audit/export"]["get"]["responses"]["200"]
    assert list(exported["content"]) == [NDJSON]


async def test_a_failed_audit_write_leaves_the_answer_and_is_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", run_worker=False)
    services = Runtime.build(settings)
    app = create_app(settings, services=services)
    litestar: Litestar = app.app  # type: ignore[assignment]
    (middleware,) = [m for m in litestar.middleware if isinstance(m, AuditMiddleware)]
    await services.start()
    try:
        _, secret = services.api_keys.create("admin", "admin")
        headers = {"Authorization": f"Bearer {secret}"}
        with services.db.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_log"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/v1/experiments", json=EXPERIMENT, headers=headers)
            assert response.status_code == 201, response.text
            assert response.json()["key"] == "hero-test"
            assert middleware.audit_failures == 1
            response = await client.get("/v1/experiments/hero-test", headers=headers)
            assert response.status_code == 200
            assert middleware.audit_failures == 1
    finally:
        await services.close()
