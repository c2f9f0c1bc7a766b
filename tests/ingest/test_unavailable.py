"""503s under backpressure: every one counted, at most one log line per code and interval."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from personify.errors import BackendUnavailable
from personify.ingest.asgi import UnavailableLog
from tests.api import Harness, assert_error, running_app


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "personify.ingest" and r.levelno == logging.WARNING
    ]


async def test_a_burst_of_503s_logs_one_line_and_counts_them_all(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="personify.ingest")
    await harness.services.log.close()
    event = {"userId": "u1", "event": "E"}
    batch = {"batch": [{**event, "type": "track"}]}
    for i in range(300):
        path, body = ("/v1/track", event) if i % 2 else ("/v1/batch", batch)
        response = await harness.client.post(path, json=body, headers=harness.auth)
        assert_error(response, 503, "log_unavailable")
    [line] = warnings_of(caplog)
    assert "log_unavailable" in line.getMessage()
    response = await harness.client.get("/v1/ingest/status", headers=harness.admin)
    assert response.status_code == 200, response.text
    assert response.json() == {"unavailable": {"total": 300, "byCode": {"log_unavailable": 300}}}
    await harness.services.log.start()


async def test_the_ingest_status_needs_an_api_key(harness: Harness) -> None:
    response = await harness.client.get("/v1/ingest/status")
    assert_error(response, 401, "missing_api_key")
    response = await harness.client.get("/v1/ingest/status", headers=harness.admin)
    assert response.json() == {"unavailable": {"total": 0, "byCode": {}}}


def test_the_next_line_says_how_many_were_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="personify.ingest")
    now = [100.0]
    log = UnavailableLog(10.0, monotonic=lambda: now[0])
    overloaded = BackendUnavailable("the log is full", code="log_overloaded")
    down = BackendUnavailable("the state database is unreachable", code="state_unavailable")
    for _ in range(50):
        log.record("POST", "/v1/batch", overloaded)
    log.record("POST", "/v1/track", down)  # another code has its own line
    now[0] += 9.9
    log.record("POST", "/v1/batch", overloaded)
    assert len(warnings_of(caplog)) == 2
    now[0] += 0.2
    log.record("POST", "/v1/batch", overloaded)
    lines = [r.getMessage() for r in warnings_of(caplog)]
    assert len(lines) == 3
    assert "log_overloaded" in lines[2] and "(50 more 503 log_overloaded" in lines[2]
    assert log.to_dict() == {
        "total": 53,
        "byCode": {"log_overloaded": 52, "state_unavailable": 1},
    }
