"""Decisions with a dependency really stopped: the cache (a Redis server of the test's own,
killed), the state database (PostgreSQL behind a TCP proxy that is stopped) and the event log
(Redis Streams on a server of the test's own, killed). Each answers 200 with the
placement's default, ``fallback: true`` and the reason; nothing raises."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.api import Harness, running_app
from tests.conftest import service_missing
from tests.postgres import fresh_schema, postgres_database
from tests.tcp_proxy import TcpProxy

__all__ = ["postgres_database"]

pytestmark = pytest.mark.services


class RedisServer:
    """A redis-server of the test's own on a free port, that the test can kill."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._dir = tmp_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server is not installed (apt-get install redis-server)")
        assert binary is not None
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


async def setup_shop(harness: Harness) -> None:
    admin = harness.admin
    for body in (
        {"id": "default-banner", "type": "banner", "fields": {"title": "Hello"}},
        {
            "id": "for-everyone",
            "type": "banner",
            "fields": {"title": "Sale"},
            "placements": ["hero"],
        },
    ):
        if body["id"] == "for-everyone":
            created = await harness.client.post(
                "/v1/placements",
                json={"id": "hero", "defaultItem": "default-banner"},
                headers=admin,
            )
            assert created.status_code == 201, created.text
        response = await harness.client.post(
            "/v1/content", json=body, headers=admin, params={"publish": "true"}
        )
        assert response.status_code == 201, response.text
    identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    sent = await harness.client.post("/v1/batch", json={"batch": [identify]}, headers=harness.auth)
    assert sent.status_code == 200, sent.text
    await harness.services.worker.run(until_idle=True)


async def hero(harness: Harness, user: str = "u1") -> dict[str, Any]:
    started = time.monotonic()
    response = await harness.client.post(
        "/v1/decide", json={"userId": user, "placements": [{"id": "hero"}]}, headers=harness.admin
    )
    assert time.monotonic() - started < 10
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_the_cache_stopped(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path / "data", cache_url=redis_server.url) as harness:
        await setup_shop(harness)
        served = (await hero(harness))["placements"]["hero"]
        assert served["fallback"] is False and served["items"][0]["id"] == "for-everyone"
        redis_server.kill()
        down = (await hero(harness))["placements"]["hero"]
        assert down["fallback"] is True and down["reason"] == "profiles_unavailable"
        assert [item["id"] for item in down["items"]] == ["default-banner"]


async def test_the_state_database_stopped(tmp_path: Path, postgres_database: str) -> None:
    parts = urlsplit(postgres_database)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.start()
    behind = urlunsplit(
        parts._replace(
            netloc=parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        )
    )
    try:
        async with running_app(tmp_path / "data", state_url=fresh_schema(behind)) as harness:
            await setup_shop(harness)
            assert (await hero(harness))["placements"]["hero"]["fallback"] is False
            proxy.stop()
            # the profile's read fails, or (when the cache holds it) its segments' read does
            cached = await hero(harness)
            placement = cached["placements"]["hero"]
            assert placement["fallback"] is True
            assert placement["reason"] in ("profiles_unavailable", "segments_unavailable")
            # the catalog read before keeps serving: the default is still known
            assert [item["id"] for item in placement["items"]] == ["default-banner"]
            stranger = (await hero(harness, "u2"))["placements"]["hero"]
            assert stranger["reason"] == "profiles_unavailable"
            assert stranger["items"][0]["id"] == "default-banner"
            proxy.start()
            back = (await hero(harness))["placements"]["hero"]
            assert back["fallback"] is False and back["items"][0]["id"] == "for-everyone"
    finally:
        proxy.stop()


async def test_the_event_log_stopped(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(
        tmp_path / "data", eventlog_url=redis_server.url, eventlog_dedupe_url=""
    ) as harness:
        await setup_shop(harness)
        assert (await hero(harness))["trace"]["exposureLogged"] is True
        redis_server.kill()
        decided = await hero(harness)
        # the answer goes out; the exposure is counted as lost
        assert decided["placements"]["hero"]["items"][0]["id"] == "for-everyone"
        assert decided["trace"]["exposureLogged"] is False
        assert harness.services.decisions.exposures_lost == 1


async def test_publishing_reloads_every_api_process_sharing_the_cache(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    data = tmp_path / "data"
    shared = {"cache_url": redis_server.url, "decide_catalog_ttl_s": 300.0}
    async with running_app(data, **shared) as one, running_app(data, **shared) as two:
        await setup_shop(one)
        assert (await hero(two))["placements"]["hero"]["items"][0]["id"] == "for-everyone"
        # a publication through process one: process two serves it at once
        response = await one.client.post(
            "/v1/content",
            json={"id": "flash", "type": "banner", "placements": ["hero"], "priority": 9},
            headers=one.admin,
            params={"publish": "true"},
        )
        assert response.status_code == 201, response.text
        assert (await hero(two))["placements"]["hero"]["items"][0]["id"] == "flash"
        # a change that bypasses the API (as the CLI does) waits for the revision's time to
        # live: once the invalidation marker is gone (2 s), the cache is what process two reads
        await asyncio.sleep(2.2)
        assert (await hero(two))["placements"]["hero"]["items"][0]["id"] == "flash"
        one.services.content.unpublish("flash")
        assert (await hero(two))["placements"]["hero"]["items"][0]["id"] == "flash"
        await one.services.decisions.catalog_changed()
        assert (await hero(two))["placements"]["hero"]["items"][0]["id"] == "for-everyone"
