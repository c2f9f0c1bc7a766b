"""The whole route table, walked: every route is public on purpose, authenticated by a write
key, or declares a scope that one guard enforces, and every role gets exactly the routes
its scopes allow: 401 without a credential (or with a write key), 403 with a role that
lacks the scope, through to the handler otherwise. The OpenAPI document names each
route's scope."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.api.guards import authorize
from personify.auth.roles import ROLES, SCOPES, allows
from personify.clock import FrozenClock
from personify.ui.session import console_guard
from tests.api import Harness, running_app

# routes anyone may call, each for a reason
PUBLIC = {
    ("GET", "/healthz"),  # liveness probes carry no credential
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),  # the API's own description
    ("GET", "/docs"),
    ("GET", "/docs/{path:str}"),
    ("GET", "/docs/openapi.json"),
    ("GET", "/docs/oauth2-redirect.html"),
    ("GET", "/docs/assets/{name:str}"),
    ("GET", "/demo"),  # the demo shop page (it calls the API with the demo write key)
    ("GET", "/personify.js"),  # the browser tracker script
    # the edge's per-segment answers: the same for everyone in the segments, cacheable
    ("GET", "/v1/content/{placement_id:str}"),
}
# routes a source's write key authenticates (checked in their own tests)
WRITE_KEY_ROUTES = {"/v1/projects/{write_key:str}/settings", "/v1/decide"}
# routes a third party's signature authenticates (tests/ingest/test_webhooks_in.py)
SIGNED_ROUTES = {"/v1/webhooks/{source:str}"}
_FAST_PATH = re.compile(
    r"^/v1/(track|t|identify|i|page|p|screen|s|group|g|alias|a|batch|import|b|m)$"
)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def _routes(harness: Harness) -> list[tuple[str, str, Any]]:
    from litestar.routes import HTTPRoute

    found = []
    for route in harness.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, handlers in route.route_handler_map.items():
            if method in ("OPTIONS", "HEAD"):
                continue
            handler = handlers[0] if isinstance(handlers, tuple) else handlers
            found.append((method, route.path, handler))
    return found


def _concrete(path: str) -> str:
    """A path with its parameters filled (ints as 1, text as "x")."""
    return re.sub(r"\{(\w+):(\w+)\}", lambda m: "1" if m.group(2) == "int" else "x", path)


async def test_every_route_is_public_write_key_or_scoped_and_each_role_gets_its_set(
    harness: Harness,
) -> None:
    secrets = {}
    for role in ROLES:
        _, secrets[role] = harness.services.api_keys.create(f"key-{role}", role)
    guarded = []
    consoled = 0
    for method, path, handler in _routes(harness):
        guards = handler.resolve_guards()
        if path.startswith("/console"):
            # the console's pages: its own guard checks the same scopes against a session
            # (tests/ui/test_console_session.py walks them role by role)
            assert console_guard in guards, f"{method} {path} is outside the console's guard"
            assert handler.opt.get("public") or handler.opt.get("scope") in SCOPES, (
                f"{method} {path} declares no known scope"
            )
            consoled += 1
            continue
        if authorize in guards:
            scope = handler.opt.get("scope")
            assert scope in SCOPES, f"{method} {path} has no known scope ({scope!r})"
            guarded.append((method, path, scope))
        else:
            assert (
                (method, path) in PUBLIC
                or path in WRITE_KEY_ROUTES
                or path in SIGNED_ROUTES
                or _FAST_PATH.match(path)
                or path.startswith("/docs")
            ), f"{method} {path} is neither public on purpose, nor write-keyed, nor scoped"
    assert len(guarded) > 60 and consoled > 3
    client = harness.client
    for method, path, scope in guarded:
        url = _concrete(path)
        anonymous = await client.request(method, url)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        # a write key is no API key: it sends events and asks for public decisions only
        written = await client.request(method, url, headers=harness.auth)
        assert written.status_code == 401, (method, path, written.text)
        for role in ROLES:
            answer = await client.request(
                method, url, headers={"Authorization": f"Bearer {secrets[role]}"}
            )
            if allows(role, scope):
                assert answer.status_code not in (401, 403), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role, answer.text)
                assert answer.json()["error"]["details"]["scope"] == scope


async def test_decisions_take_the_decide_scope_or_a_write_key(harness: Harness) -> None:
    body = {"userId": "u1", "placements": [{"id": "nowhere"}]}
    for role in ROLES:
        _, secret = harness.services.api_keys.create(f"decider-{role}", role)
        answer = await harness.client.post(
            "/v1/decide", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        assert answer.status_code == (200 if allows(role, "decide") else 403), role
    assert (
        await harness.client.post("/v1/decide", json=body, headers=harness.auth)
    ).status_code == 200
    assert (await harness.client.post("/v1/decide", json=body)).status_code == 401


async def test_the_openapi_document_names_each_routes_scope(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/experiments/{key}"]["patch"]
    assert operation["security"] == [{"apiKey": ["experiments:write"]}]
    assert operation["x-personify-scope"] == "experiments:write"
    profile = document["paths"]["/v1/profiles/{id}"]["get"]
    assert profile["x-personify-scope"] == "profiles:read" and profile["x-personify-per-user"]


async def test_expired_and_rotated_keys(tmp_path: Path) -> None:
    clock = FrozenClock(datetime(2026, 12, 1, tzinfo=UTC))
    async with running_app(tmp_path / "keys", clock=clock, run_lake_sink=False) as harness:
        await _expire_and_rotate(harness, clock)


async def _expire_and_rotate(harness: Harness, clock: FrozenClock) -> None:
    keys = harness.services.api_keys
    _, expiring = keys.create("short-lived", "analyst", expires_at=clock.now() + timedelta(hours=1))
    url = "/v1/segments"
    bearer = {"Authorization": f"Bearer {expiring}"}
    assert (await harness.client.get(url, headers=bearer)).status_code == 200
    clock.advance(3600)
    expired = await harness.client.get(url, headers=bearer)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "invalid_api_key"
    _, old = keys.create("rotating", "analyst")
    key, new = keys.rotate("rotating", overlap=timedelta(hours=1))
    for secret in (old, new):
        answer = await harness.client.get(url, headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 200
    _, gone = keys.create("rotated-now", "analyst")
    keys.rotate("rotated-now", overlap=timedelta(0))
    answer = await harness.client.get(url, headers={"Authorization": f"Bearer {gone}"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    listed = {k.name: k for k in keys.list()}
    assert listed["short-lived"].last_used_at is not None
    assert listed["rotating"].previous_expires_at is not None and key.id == listed["rotating"].id
