"""The console's sign-in, sessions, roles and CSRF, through the real app over HTTP: a form
post without the session's token is refused, a role sees only its pages, a revoked key ends
its sessions, and signing out ends the session for good."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from personify.auth.roles import ROLES, allows
from personify.ui.rendering import NAV
from tests.api import Harness, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def _csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def test_a_page_without_a_session_redirects_to_sign_in_and_back(harness: Harness) -> None:
    response = await harness.client.get("/console?q=x", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=/console%3Fq%3Dx"
    # htmx asks for a fragment: 401 in JSON, and where to go
    response = await harness.client.get("/console", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "sign_in_required"
    assert response.headers["hx-redirect"].startswith("/console/login")


async def test_sign_in_sets_a_strict_http_only_cookie_and_lands_on_next(harness: Harness) -> None:
    client = harness.client
    form = await client.get("/console/login?next=/console")
    assert form.status_code == 200
    assert "text/html" in form.headers["content-type"]
    assert "script-src 'self'" in form.headers["content-security-policy"]
    login_cookie = form.headers["set-cookie"]
    assert "HttpOnly" in login_cookie and "samesite=strict" in login_cookie.lower()
    response = await client.post(
        "/console/login",
        data={"key": harness.admin_secret, "csrf": _csrf_of(form.text), "next": "/console"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("personify_console=")
    assert (
        "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/console" in cookie
    )
    page = await client.get("/console")
    assert page.status_code == 200
    assert "Overview" in page.text and "Sign out" in page.text
    # the session's secret is not the key, and the database keeps only its hash
    token = client.cookies.get("personify_console")
    assert token and token != harness.admin_secret
    with harness.services.db.connect() as conn:
        import sqlalchemy as sa

        ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM console_sessions"))]
    assert token not in ids and len(ids) == 1


async def test_sign_in_refuses_a_bad_key_a_forged_form_and_an_outside_next(
    harness: Harness,
) -> None:
    client = harness.client
    form = await client.get("/console/login")
    bad = await client.post(
        "/console/login", data={"key": "pk_nope", "csrf": _csrf_of(form.text), "next": "/console"}
    )
    assert bad.status_code == 401
    assert "unknown, revoked or expired" in bad.text
    assert client.cookies.get("personify_console") is None
    # a form from elsewhere has no matching cookie
    forged = await httpx.AsyncClient(
        transport=client._transport, base_url=str(client.base_url)
    ).post("/console/login", data={"key": harness.admin_secret, "csrf": "x", "next": "/console"})
    assert forged.status_code == 403
    assert "personify_console=" not in forged.headers.get("set-cookie", "")
    # next may only lead into the console
    response = await client.post(
        "/console/login",
        data={
            "key": harness.admin_secret,
            "csrf": _csrf_of(form.text),
            "next": "//evil.example/console",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console"


async def test_a_form_post_without_the_session_csrf_token_is_refused(harness: Harness) -> None:
    client = harness.client
    await sign_in(client, harness.admin_secret)
    page = await client.get("/console")
    refused = await client.post("/console/logout", data={"csrf": "not-the-token"})
    assert refused.status_code == 403
    assert "csrf_failed" in refused.text
    # still signed in
    assert (await client.get("/console", follow_redirects=False)).status_code == 200
    done = await client.post(
        "/console/logout", data={"csrf": _csrf_of(page.text)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/console/login"
    # the session is gone on the server, not only the cookie
    token = page.request.headers["cookie"].split("personify_console=")[1].split(";")[0]
    client.cookies.set("personify_console", token, path="/console")
    after = await client.get("/console", follow_redirects=False)
    assert after.status_code == 303


async def test_each_role_sees_exactly_the_pages_its_scopes_allow(harness: Harness) -> None:
    served = {item.path for item in NAV}
    for role in ROLES:
        if role == "service":
            continue
        _, secret = harness.services.api_keys.create(f"console-{role}", role)
        client = httpx.AsyncClient(
            transport=harness.client._transport, base_url=str(harness.client.base_url)
        )
        async with client:
            await sign_in(client, secret)
            for item in NAV:
                response = await client.get(item.path, follow_redirects=False)
                if response.status_code == 404:
                    served.discard(item.path)
                    continue
                expected = 200 if allows(role, item.scope) else 403
                assert response.status_code == expected, (role, item.path, response.text[:300])
            home = await client.get("/console", follow_redirects=False)
            if allows(role, "aggregates:read"):
                links = set(re.findall(r'<li><a href="(/console[^"]*)"', home.text))
                assert links == {
                    item.path for item in NAV if item.path in served and allows(role, item.scope)
                }


async def test_a_viewer_cannot_reach_the_sql_page(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("console-viewer", "viewer")
    await sign_in(harness.client, secret)
    response = await harness.client.get("/console/sql", follow_redirects=False)
    assert response.status_code in (403, 404)
    if response.status_code == 403:
        assert "sql" in response.text


async def test_revoking_the_key_ends_its_console_sessions(harness: Harness) -> None:
    key, secret = harness.services.api_keys.create("console-revoked", "admin")
    await sign_in(harness.client, secret)
    assert (await harness.client.get("/console", follow_redirects=False)).status_code == 200
    harness.services.api_keys.revoke(key.id)
    response = await harness.client.get("/console", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/login")


async def test_a_service_key_signs_in_but_sees_no_page(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("console-service", "service")
    await sign_in(harness.client, secret)
    response = await harness.client.get("/console", follow_redirects=False)
    assert response.status_code == 403
    assert "aggregates:read" in response.text


async def test_static_files_are_served_without_a_session(harness: Harness) -> None:
    response = await harness.client.get("/console/static/console.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["content-type"]
    missing = await harness.client.get("/console/nope", follow_redirects=False)
    assert missing.status_code in (303, 404)
