"""``POST /v1/m``: analytics.js's delivery metrics are read up to a small bound and dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, assert_error, running_app

CHUNK = b"x" * 65_536


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


async def test_a_50_mb_chunked_body_is_413_and_read_no_further(harness: Harness) -> None:
    sent = 0

    async def fifty_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(50 * 1024 * 1024 // len(CHUNK)):
            sent += 1
            yield CHUNK

    # no Content-Length: httpx sends a generator chunked
    response = await harness.client.post(
        "/v1/m", content=fifty_megabytes(), headers={"Content-Type": "text/plain"}
    )
    error = assert_error(response, 413, "metrics_too_large")
    limit = harness.services.settings.max_event_bytes
    assert error["details"] == {"limit": limit}
    assert response.headers["access-control-allow-origin"] == "*"
    # the server stopped reading at the limit
    assert sent * len(CHUNK) <= limit + 2 * len(CHUNK)
    assert await harness.logged() == []


async def test_a_declared_length_over_the_limit_is_413_before_reading(harness: Harness) -> None:
    limit = harness.services.settings.max_event_bytes
    response = await harness.client.post(
        "/v1/m", content=b"x" * (limit + 1), headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 413, "metrics_too_large")


async def test_metrics_within_the_limit_are_accepted_and_dropped(harness: Harness) -> None:
    limit = harness.services.settings.max_event_bytes
    for body in [b"", b'{"series":[]}', b"x" * limit]:
        response = await harness.client.post(
            "/v1/m", content=body, headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}
    assert await harness.logged() == []
