"""``/readyz`` with its engines really stopped: a Redis cache of the test's own, killed; the
state database (PostgreSQL) behind a TCP proxy that is stopped; a Redis Streams event log
on a server of the test's own, killed. Each answers 503 ``dependency_down`` naming the
engine, while ``/healthz`` stays 200; the state database's return makes the node ready again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.api import Harness, running_app
from tests.decide.test_fallbacks import RedisServer
from tests.postgres import fresh_schema, postgres_database
from tests.tcp_proxy import TcpProxy

__all__ = ["postgres_database"]

CHECKS = ["eventlog", "state", "cache"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


async def ready(harness: Harness) -> tuple[int, dict[str, Any]]:
    answer = await harness.client.get("/readyz")
    document: dict[str, Any] = answer.json()
    return answer.status_code, document


async def not_ready(harness: Harness, failed: str, code: str) -> None:
    status, body = await ready(harness)
    assert status == 503, body
    error = body["error"]
    assert error["code"] == "dependency_down"
    checks = {check["name"]: check for check in error["details"]["checks"]}
    assert list(checks) == CHECKS
    assert [name for name, check in checks.items() if not check["ok"]] == [failed]
    assert checks[failed]["code"] == code
    # the driver's text (hosts, ports) stays in the server's log
    assert "127.0.0.1" not in str(body)
    assert (await harness.client.get("/healthz")).status_code == 200


async def test_ready_lists_every_check(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data") as harness:
        status, body = await ready(harness)
        assert status == 200, body
        assert body["status"] == "ready"
        assert [check["name"] for check in body["checks"]] == CHECKS
        assert all(check["ok"] and check["durationMs"] >= 0 for check in body["checks"])


@pytest.mark.services
async def test_the_cache_stopped(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path / "data", cache_url=redis_server.url) as harness:
        assert (await ready(harness))[0] == 200
        redis_server.kill()
        await not_ready(harness, "cache", "cache_unavailable")


@pytest.mark.services
async def test_the_event_log_stopped(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(
        tmp_path / "data", eventlog_url=f"{redis_server.url}?stream=events", eventlog_dedupe_url=""
    ) as harness:
        assert (await ready(harness))[0] == 200
        redis_server.kill()
        await not_ready(harness, "eventlog", "log_unavailable")


@pytest.mark.services
async def test_the_state_database_stopped_and_back(tmp_path: Path, postgres_database: str) -> None:
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
            assert (await ready(harness))[0] == 200
            proxy.stop()
            await not_ready(harness, "state", "state_unavailable")
            proxy.start()
            status, body = await ready(harness)
            assert status == 200, body
    finally:
        proxy.stop()
