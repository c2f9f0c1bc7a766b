"""Revocations reach every process within a second over the PostgreSQL state database, with
the auth cache TTL (here ten minutes, so it cannot be what makes the tests pass) as the
fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from personify.auth.keys import ApiKeyRepository
from personify.auth.revocations import CHANNEL, RevocationListener
from personify.ingest.sources import SourceRepository
from personify.store.database import Database, open_database
from tests.api import assert_error, running_app
from tests.conftest import make_settings
from tests.e2e.conftest import cli, server_env
from tests.postgres import fresh_schema, postgres_database  # noqa: F401

LONG_TTL_S = 600.0
WITHIN_S = 1.0


async def within(seconds: float, condition: Callable[[], Awaitable[bool]]) -> float:
    """How long ``condition`` took to hold, polled; fails after ``seconds``."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def state_url(request: pytest.FixtureRequest) -> str:
    return fresh_schema(request.getfixturevalue("postgres_database"))


@pytest.fixture
def two_databases(state_url: str, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    """Two engines on one PostgreSQL schema, as two processes have."""
    first = open_database(make_settings(tmp_path / "a", state_url=state_url))
    second = open_database(make_settings(tmp_path / "b", state_url=state_url))
    yield first, second
    first.dispose()
    second.dispose()


@pytest.fixture
async def listener(two_databases: tuple[Database, Database]) -> AsyncIterator[RevocationListener]:
    """The second process's listener (started; closed at the end)."""
    started = RevocationListener(two_databases[1], reconnect_s=0.1)
    yield started
    await started.close()


pytestmark = pytest.mark.services


async def listening(listener: RevocationListener) -> None:
    """Started, and wait until the channel is up (the notice, not the connection, is tested)."""
    await listener.start()

    async def up() -> bool:
        return listener.is_listening

    await within(5.0, up)


async def test_a_write_key_revoked_in_one_process_is_refused_in_another_within_a_second(
    two_databases: tuple[Database, Database], listener: RevocationListener
) -> None:
    cli_side = SourceRepository(two_databases[0])
    api_side = SourceRepository(two_databases[1], cache_ttl_s=LONG_TTL_S, revocations=listener)
    await listening(listener)
    _, key = cli_side.create("website")
    assert api_side.resolve(key) is not None
    assert api_side.resolve_cached(key)[0]  # cached for ten minutes
    cli_side.revoke("website")

    async def refused() -> bool:
        return api_side.resolve(key) is None

    assert await within(WITHIN_S, refused) < WITHIN_S
    assert listener.notices >= 1


async def test_an_api_key_revoked_in_one_process_is_refused_in_another(
    two_databases: tuple[Database, Database], listener: RevocationListener
) -> None:
    cli_side = ApiKeyRepository(two_databases[0])
    api_side = ApiKeyRepository(two_databases[1], cache_ttl_s=LONG_TTL_S, revocations=listener)
    await listening(listener)
    _, secret = cli_side.create("ops", "admin")
    assert api_side.resolve(secret) is not None
    cli_side.revoke("ops")

    async def refused() -> bool:
        return api_side.resolve(secret) is None

    await within(WITHIN_S, refused)


async def test_notices_lost_while_the_listener_was_away_still_count(
    two_databases: tuple[Database, Database], listener: RevocationListener, state_url: str
) -> None:
    cli_side = SourceRepository(two_databases[0])
    api_side = SourceRepository(two_databases[1], cache_ttl_s=LONG_TTL_S, revocations=listener)
    await listening(listener)
    _, key = cli_side.create("website")
    backends = "SELECT pid FROM pg_stat_activity WHERE query = %s AND datname = current_database()"

    async def listens() -> bool:
        with psycopg.connect(state_url.split("?")[0], autocommit=True) as conn:
            return conn.execute(backends, (f"LISTEN {CHANNEL}",)).fetchone() is not None

    await within(5.0, listens)
    assert api_side.resolve(key) is not None
    with psycopg.connect(state_url.split("?")[0], autocommit=True) as conn:
        conn.execute(
            f"SELECT pg_terminate_backend(pid) FROM ({backends}) AS listeners",
            (f"LISTEN {CHANNEL}",),
        )
        # revoked while nobody listens: the notice is lost, the reconnection makes up for it
        cli_side.revoke("website")

    async def refused() -> bool:
        return api_side.resolve(key) is None

    await within(5.0, refused)


async def test_two_apps_on_one_state_database(tmp_path: Path, state_url: str) -> None:
    async with (
        running_app(tmp_path / "a", state_url=state_url, auth_cache_ttl_s=LONG_TTL_S) as first,
        running_app(tmp_path / "b", state_url=state_url, auth_cache_ttl_s=LONG_TTL_S) as second,
    ):
        body = {"userId": "u1", "event": "E"}
        response = await second.client.post("/v1/track", json=body, headers=second.auth)
        assert response.status_code == 200, response.text
        response = await second.client.get("/v1/log", headers=second.admin)
        assert response.status_code == 200, response.text
        first.services.sources.revoke("web")
        first.services.api_keys.revoke("test-admin")

        async def write_key_refused() -> bool:
            response = await second.client.post("/v1/track", json=body, headers=second.auth)
            return response.status_code == 401

        await within(WITHIN_S, write_key_refused)
        response = await second.client.post("/v1/track", json=body, headers=second.auth)
        assert_error(response, 401, "invalid_write_key")
        response = await second.client.get("/v1/log", headers=second.admin)
        assert_error(response, 401, "invalid_api_key")


@pytest.mark.e2e
async def test_a_revocation_from_the_command_line_reaches_a_running_app(
    tmp_path: Path, state_url: str
) -> None:
    async with running_app(
        tmp_path / "app", state_url=state_url, auth_cache_ttl_s=LONG_TTL_S
    ) as app:
        body = {"userId": "u1", "event": "E"}
        response = await app.client.post("/v1/track", json=body, headers=app.auth)
        assert response.status_code == 200, response.text
        env = server_env(tmp_path / "cli", PERSONIFY_STATE_URL=state_url)
        await asyncio.to_thread(cli, env, "sources", "revoke", "web")

        async def refused() -> bool:
            response = await app.client.post("/v1/track", json=body, headers=app.auth)
            return response.status_code == 401

        await within(WITHIN_S, refused)


async def test_sqlite_has_no_channel_and_the_listener_does_nothing(tmp_path: Path) -> None:
    db = open_database(make_settings(tmp_path / "data"))
    try:
        listener = RevocationListener(db)
        assert not listener.has_channel
        await listener.start()
        await listener.close()
    finally:
        db.dispose()
