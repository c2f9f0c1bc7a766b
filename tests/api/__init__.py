"""Tests of the HTTP API through the real ASGI app, and the harness the HTTP tests share."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from personify.api.app import create_app
from personify.clock import Clock
from personify.events.normalize import EVENT_TYPES, SHORT_TYPES
from personify.ingest.sources import Source
from personify.runtime import Runtime
from tests.conftest import make_settings


def basic_auth(write_key: str) -> dict[str, str]:
    """The header Segment's libraries send: the write key as user, an empty password."""
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Harness:
    """A started app on its own data folder, with one source and one admin key."""

    services: Runtime
    client: httpx.AsyncClient
    source: Source
    write_key: str
    admin_secret: str
    # the Litestar app behind the collector's fast path (its route table)
    app: Any = None

    @property
    def auth(self) -> dict[str, str]:
        """Basic auth headers for the harness's source."""
        return basic_auth(self.write_key)

    @property
    def admin(self) -> dict[str, str]:
        """Bearer headers for the harness's admin key."""
        return {"Authorization": f"Bearer {self.admin_secret}"}

    async def logged(self, limit: int = 500) -> list[dict[str, Any]]:
        """The events in the log, oldest first, decoded."""
        return [msgspec.json.decode(e.payload) for e in await self.services.log.tail(limit)]

    async def failed(self) -> list[dict[str, Any]]:
        """Every dead letter, through the admin API."""
        response = await self.client.get("/v1/failed-events", headers=self.admin)
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


@asynccontextmanager
async def running_app(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    write_key: str = "wk_test-write-key",
    admin_secret: str = "pk_test-admin-secret",
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Build, start and finally close the services and app on ``data_dir``.

    The source and admin key are created on first use of ``data_dir`` and found again on a
    restart, so a test can stop and reopen the same folder.
    """
    values: dict[str, Any] = {"run_worker": False}
    values.update(overrides)
    settings = make_settings(data_dir, **values)
    services = Runtime.build(settings, clock=clock)
    app = create_app(settings, services=services)
    await services.start()
    try:
        source = services.sources.resolve(write_key)
        if source is None:
            source, _ = services.sources.create("web", write_key=write_key)
        if services.api_keys.resolve(admin_secret) is None:
            services.api_keys.create("test-admin", "admin", secret=admin_secret)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Harness(services, client, source, write_key, admin_secret, app.app)
    finally:
        await services.close()


def is_collector_path(path: str) -> bool:
    """Whether ``path`` is a collector route (its errors also carry top-level code and
    message, for Segment's and RudderStack's libraries)."""
    if path.startswith("/v1/projects/") and path.endswith("/settings"):
        return True
    name = path.removeprefix("/v1/")
    return path.startswith("/v1/") and (
        name in EVENT_TYPES or name in SHORT_TYPES or name in ("batch", "import", "b", "m")
    )


def error_keys(response: httpx.Response) -> set[str]:
    """The top-level keys of an error answer to ``response``'s request."""
    if is_collector_path(response.request.url.path):
        return {"error", "code", "message"}
    return {"error"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the JSON error document with ``status`` and ``code``; returns it.

    On collector routes the document repeats ``code`` and ``message`` at the top level."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == error_keys(response), body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    if "code" in body:
        assert (body["code"], body["message"]) == (error["code"], error["message"])
    return error
