"""A state database that goes away answers 503 with ``Retry-After`` on every route, never 500.

The app runs on PostgreSQL through a TCP proxy the test starts (``tests/store/proxy.py``), so
the outage is the proxy dropping its connections, during a request or between requests, while
the shared server keeps running. Requests go through the app's ASGI interface as plain HTTP.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import pytest

from personify.api.app import create_app
from personify.auth.keys import ApiKeyRepository
from personify.ingest.sources import SourceRepository
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.settings import Settings
from personify.store.database import Database
from tests.conftest import make_settings
from tests.postgres import fresh_schema
from tests.profiles.factory import event
from tests.store.proxy import TcpProxy

WRITE_KEY = "wk_outage-write-key"
ADMIN_SECRET = "pk_outage-admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
WRITER = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
TRACK = msgspec.json.encode({"userId": "jo", "event": "Clicked", "messageId": "outage-1"})
BATCH = msgspec.json.encode(
    {"batch": [{"type": "track", "userId": "jo", "event": "Clicked", "messageId": "outage-2"}]}
)

# routes whose handler reads the state database, whatever the key caches hold
STATE_ROUTES: list[tuple[str, str, bytes | None]] = [
    ("GET", "/v1/profiles/dev-1", None),
    ("GET", "/v1/profiles/jo?as_of=2030-01-01T00:00:00Z", None),
    ("GET", "/v1/profiles/jo/history", None),
    ("GET", "/v1/profiles/jo/events", None),
    ("GET", "/v1/failed-events", None),
    ("GET", "/v1/worker/status", None),
]
# routes that read the state database only to check their key
KEYED_ROUTES: list[tuple[str, str, bytes | None]] = [
    ("GET", "/v1/log", None),
    ("GET", "/v1/ingest/status", None),
    ("POST", "/v1/track", TRACK),
    ("POST", "/v1/batch", BATCH),
]


@pytest.fixture
def direct_url(postgres_database: str) -> str:
    """A fresh schema holding a source, an admin key and one profile, reached directly."""
    url = fresh_schema(postgres_database)
    db = Database(url)
    try:
        SourceRepository(db).create("web", write_key=WRITE_KEY)
        ApiKeyRepository(db).create("ops", "admin", secret=ADMIN_SECRET)
        ProfileProcessor(db, FeatureSet()).apply(
            [
                view_event(event("page", "m1", 0, anonymous_id="dev-1")),
                view_event(event("identify", "m2", 1, user_id="jo", anonymous_id="dev-1")),
            ]
        )
    finally:
        db.dispose()
    return url


@pytest.fixture
def proxy(direct_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(direct_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as running:
        yield running


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's ASGI lifespan around a client that talks to it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = await outbox.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


async def _request(
    client: httpx.AsyncClient, method: str, path: str, body: bytes | None
) -> httpx.Response:
    if body is None:
        return await client.request(method, path, headers=ADMIN)
    headers = {**WRITER, "Content-Type": "application/json"}
    return await client.request(method, path, content=body, headers=headers)


def _assert_unavailable(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == 503, (where, response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1, where
    assert response.headers["content-type"].startswith("application/json"), where
    error = response.json()["error"]
    assert error["code"] == "state_unavailable", (where, error)
    assert isinstance(error["message"], str) and error["message"], where
    assert "details" in error, where


def _settings(tmp_path: Path, state_url: str, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path / "data", state_url=state_url, run_worker=False, run_lake_sink=False, **overrides
    )


@pytest.mark.parametrize("auth_cache_ttl_s", [0.0, 300.0], ids=["keys-uncached", "keys-cached"])
async def test_every_route_answers_503_while_the_state_database_is_cut_off(
    tmp_path: Path, direct_url: str, proxy: TcpProxy, auth_cache_ttl_s: float
) -> None:
    app = create_app(
        _settings(tmp_path, _through(direct_url, proxy), auth_cache_ttl_s=auth_cache_ttl_s)
    )
    async with _serving(app) as client:
        for method, path, body in STATE_ROUTES + KEYED_ROUTES:
            # the profile cache would answer for dev-1 once it is read: warm it with its other id
            response = await _request(client, method, path.replace("dev-1", "jo"), body)
            assert response.status_code == 200, (path, response.text)

        proxy.cut()
        for method, path, body in STATE_ROUTES:
            _assert_unavailable(await _request(client, method, path, body))
        for method, path, body in KEYED_ROUTES:
            response = await _request(client, method, path, body)
            if auth_cache_ttl_s:
                # the key is remembered and nothing else needs the state database
                assert response.status_code == 200, (path, response.text)
            else:
                _assert_unavailable(response)

        proxy.restore()
        for method, path, body in STATE_ROUTES + KEYED_ROUTES:
            response = await _request(client, method, path, body)
            assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize(
    "path", ["/v1/profiles/jo/history", "/v1/profiles/jo?as_of=2030-01-01T00:00:00Z"]
)
async def test_a_cut_at_any_point_of_a_request_is_a_503(
    tmp_path: Path, direct_url: str, proxy: TcpProxy, path: str
) -> None:
    # every key lookup goes to the database, so the cut lands on authentication as well as on
    # each of the handler's queries, and on connection set-up after the pool's liveness check
    app = create_app(_settings(tmp_path, _through(direct_url, proxy), auth_cache_ttl_s=0.0))
    outcomes: list[int] = []
    async with _serving(app) as client:
        for after_chunks in range(1, 60):
            proxy.restore()
            proxy.cut(after_chunks=after_chunks)
            response = await _request(client, "GET", path, None)
            outcomes.append(response.status_code)
            if response.status_code == 200:
                break
            _assert_unavailable(response)
        proxy.restore()
        assert (await _request(client, "GET", path, None)).status_code == 200
    assert outcomes[-1] == 200, outcomes
    # the cut fell inside the request more than once before the request could finish
    assert outcomes.count(503) >= 2, outcomes
