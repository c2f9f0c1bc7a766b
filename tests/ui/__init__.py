"""Console tests: helpers shared by the page tests."""

from __future__ import annotations

import re

import httpx


async def sign_in(client: httpx.AsyncClient, secret: str, *, next_path: str = "/console") -> str:
    """Sign ``client`` in to the console with an API key; returns the session's CSRF token
    (from the page signing in lands on, or from the sign-in response when that page is not
    the role's)."""
    form = await client.get("/console/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found, form.text[:500]
    response = await client.post(
        "/console/login",
        data={"key": secret, "csrf": found.group(1), "next": next_path},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text[:500]
    assert client.cookies.get("personify_console"), "no session cookie"
    page = await client.get(next_path)
    token = re.search(r'data-csrf="([^"]+)"', page.text)
    return token.group(1) if token else ""
