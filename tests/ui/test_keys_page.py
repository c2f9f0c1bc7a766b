"""The console's sources-and-keys page through the real app over HTTP: create, rotate and
revoke API keys and sources, the new secret shown once and never again, the API taking the
new secret and refusing the revoked one, owner keys left to owners, forms refused without
the session's CSRF token, and roles without ``keys:write`` kept out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, basic_auth, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


@pytest.fixture
async def admin(harness: Harness) -> tuple[Harness, str]:
    """The harness signed in with its admin key, and the session's CSRF token."""
    token = await sign_in(harness.client, harness.admin_secret, next_path="/console/keys")
    assert token
    return harness, token


def _secret(html: str) -> str:
    found = re.search(r'<p class="secret mono" id="secret-value">([^<]+)</p>', html)
    assert found, html[:2000]
    return found.group(1)


def _key_id(harness: Harness, name: str) -> str:
    return next(key.id for key in harness.services.api_keys.list() if key.name == name)


async def _status(harness: Harness, secret: str) -> int:
    """What the API answers a read with this key."""
    response = await harness.client.get("/v1/log", headers={"Authorization": f"Bearer {secret}"})
    return response.status_code


async def test_the_page_lists_sources_and_keys_without_secrets(admin: tuple[Harness, str]) -> None:
    harness, _ = admin
    page = await harness.client.get("/console/keys")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "<caption>Sources and their write keys</caption>" in page.text
    assert "<caption>API keys, their roles and use</caption>" in page.text
    assert harness.source.name in page.text and harness.source.write_key_prefix in page.text
    assert "test-admin" in page.text
    assert harness.admin_secret not in page.text and harness.write_key not in page.text
    # an admin is not offered the owner role
    assert '<option value="owner"' not in page.text
    assert '<option value="analyst" selected>' in page.text


async def test_create_shows_the_secret_once_and_the_api_takes_it(
    admin: tuple[Harness, str],
) -> None:
    harness, csrf = admin
    created = await harness.client.post(
        "/console/keys/api-keys",
        data={"csrf": csrf, "name": "ops-team", "role": "analyst", "expires_days": "30"},
        follow_redirects=False,
    )
    assert created.status_code == 201, created.text[:1000]
    assert created.headers["cache-control"] == "no-store"
    assert "location" not in created.headers
    secret = _secret(created.text)
    assert secret.startswith("pk_")
    assert "shown <strong>only this once</strong>" in created.text
    assert await _status(harness, secret) == 200
    key = next(k for k in harness.services.api_keys.list() if k.name == "ops-team")
    assert key.role == "analyst" and key.expires_at is not None
    assert 29 <= (key.expires_at - key.created_at).days <= 30
    # never again: the list shows the prefix only
    page = await harness.client.get("/console/keys")
    assert secret not in page.text and secret[:10] in page.text
    assert "ops-team" in page.text


async def test_rotate_gives_a_new_secret_and_revoke_ends_the_key(
    admin: tuple[Harness, str],
) -> None:
    harness, csrf = admin
    _, old = harness.services.api_keys.create("rotated", "analyst")
    key_id = _key_id(harness, "rotated")
    rotated = await harness.client.post(
        f"/console/keys/api-keys/{key_id}/rotate",
        data={"csrf": csrf, "overlap_hours": "0"},
        follow_redirects=False,
    )
    assert rotated.status_code == 200, rotated.text[:1000]
    new = _secret(rotated.text)
    assert new != old
    assert "The old secret no longer works." in rotated.text
    assert await _status(harness, new) == 200
    assert await _status(harness, old) == 401
    # with an overlap, the old secret keeps working for a while
    again = await harness.client.post(
        f"/console/keys/api-keys/{key_id}/rotate",
        data={"csrf": csrf, "overlap_hours": "2"},
    )
    newest = _secret(again.text)
    assert "The old secret works until" in again.text
    assert await _status(harness, newest) == 200
    assert await _status(harness, new) == 200
    page = await harness.client.get("/console/keys")
    assert ">rotating</span>" in page.text
    revoked = await harness.client.post(
        f"/console/keys/api-keys/{key_id}/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    assert revoked.headers["location"] == "/console/keys?notice=key_revoked"
    assert await _status(harness, newest) == 401
    assert await _status(harness, new) == 401
    page = await harness.client.get(revoked.headers["location"])
    assert "The key is revoked" in page.text and ">revoked " in page.text


async def test_sources_are_created_with_a_write_key_shown_once_and_revoked(
    admin: tuple[Harness, str],
) -> None:
    harness, csrf = admin
    created = await harness.client.post(
        "/console/keys/sources", data={"csrf": csrf, "name": "ios-app"}, follow_redirects=False
    )
    assert created.status_code == 201, created.text[:1000]
    write_key = _secret(created.text)
    assert write_key.startswith("wk_")
    event = {"type": "track", "event": "Opened", "userId": "u1", "messageId": "m-console-1"}
    accepted = await harness.client.post("/v1/track", json=event, headers=basic_auth(write_key))
    assert accepted.status_code == 200, accepted.text
    source = harness.services.sources.get("ios-app")
    revoked = await harness.client.post(
        f"/console/keys/sources/{source.id}/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    assert revoked.headers["location"] == "/console/keys?notice=source_revoked"
    refused = await harness.client.post(
        "/v1/track", json={**event, "messageId": "m-console-2"}, headers=basic_auth(write_key)
    )
    assert refused.status_code == 401
    page = await harness.client.get("/console/keys")
    assert write_key not in page.text


async def test_forms_without_the_csrf_token_change_nothing(admin: tuple[Harness, str]) -> None:
    harness, _ = admin
    _, secret = harness.services.api_keys.create("kept", "analyst")
    key_id = _key_id(harness, "kept")
    for path, data in (
        ("/console/keys/api-keys", {"name": "forged", "role": "admin"}),
        ("/console/keys/sources", {"name": "forged-source"}),
        (f"/console/keys/api-keys/{key_id}/revoke", {}),
        (f"/console/keys/api-keys/{key_id}/rotate", {"csrf": "not-the-token"}),
    ):
        response = await harness.client.post(path, data=data, follow_redirects=False)
        assert response.status_code == 403, path
        assert "csrf_failed" in response.text
    assert "forged" not in {k.name for k in harness.services.api_keys.list()}
    assert "forged-source" not in {s.name for s in harness.services.sources.list()}
    assert await _status(harness, secret) == 200


async def test_an_admin_cannot_create_rotate_or_revoke_owner_keys(
    admin: tuple[Harness, str],
) -> None:
    harness, csrf = admin
    _, owner_secret = harness.services.api_keys.create("the-owner", "owner")
    owner_id = _key_id(harness, "the-owner")
    created = await harness.client.post(
        "/console/keys/api-keys", data={"csrf": csrf, "name": "new-owner", "role": "owner"}
    )
    assert created.status_code == 403 and "owner_key" in created.text
    for action in ("rotate", "revoke"):
        response = await harness.client.post(
            f"/console/keys/api-keys/{owner_id}/{action}", data={"csrf": csrf}
        )
        assert response.status_code == 403 and "owner_key" in response.text
    assert await _status(harness, owner_secret) == 200
    assert "new-owner" not in {k.name for k in harness.services.api_keys.list()}
    page = await harness.client.get("/console/keys")
    assert f"/console/keys/api-keys/{owner_id}/revoke" not in page.text
    assert "an owner's to change" in page.text


async def test_an_owner_manages_owner_keys(harness: Harness) -> None:
    _, owner_secret = harness.services.api_keys.create("the-owner", "owner")
    csrf = await sign_in(harness.client, owner_secret, next_path="/console/keys")
    page = await harness.client.get("/console/keys")
    assert '<option value="owner"' in page.text
    created = await harness.client.post(
        "/console/keys/api-keys", data={"csrf": csrf, "name": "second-owner", "role": "owner"}
    )
    assert created.status_code == 201
    second = _secret(created.text)
    second_id = _key_id(harness, "second-owner")
    revoked = await harness.client.post(
        f"/console/keys/api-keys/{second_id}/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    assert await _status(harness, second) == 401


async def test_bad_input_is_refused_with_a_reason(admin: tuple[Harness, str]) -> None:
    harness, csrf = admin
    for data, code in (
        ({"name": "  ", "role": "analyst"}, "invalid_name"),
        ({"name": "x", "role": "root"}, "invalid_role"),
        ({"name": "x", "role": "analyst", "expires_days": "-1"}, "invalid_parameter"),
        ({"name": "x", "role": "analyst", "expires_days": "99999999999"}, "invalid_parameter"),
    ):
        response = await harness.client.post("/console/keys/api-keys", data={"csrf": csrf, **data})
        assert response.status_code == 400, data
        assert code in response.text
    missing = await harness.client.post(
        "/console/keys/api-keys/nope/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert missing.status_code == 404 and "key_not_found" in missing.text
    taken = await harness.client.post(
        "/console/keys/sources", data={"csrf": csrf, "name": harness.source.name}
    )
    assert taken.status_code == 409 and "source_exists" in taken.text


@pytest.mark.parametrize("role", ["editor", "analyst", "viewer"])
async def test_roles_without_keys_write_are_kept_out(harness: Harness, role: str) -> None:
    _, secret = harness.services.api_keys.create(f"console-{role}", role)
    await sign_in(harness.client, secret)
    page = await harness.client.get("/console/keys", follow_redirects=False)
    assert page.status_code == 403 and "keys:write" in page.text
    form = await harness.client.get("/console")
    token = re.search(r'data-csrf="([^"]+)"', form.text)
    csrf = token.group(1) if token else ""
    response = await harness.client.post(
        "/console/keys/api-keys", data={"csrf": csrf, "name": "sneaky", "role": "admin"}
    )
    assert response.status_code == 403
    assert "sneaky" not in {k.name for k in harness.services.api_keys.list()}
