"""The access log through the real ASGI app (``AccessLog`` around ``create_app``, as
``personify serve`` runs it): one JSON line per request, collector fast path and Litestar
routes alike, with the request id of the response header, the route template, and nothing
of the person behind the request."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.api.access_log import UNMATCHED, logged
from personify.api.app import create_app
from personify.cli.logs import JsonFormatter, RequestIdFilter, TextFormatter, configure_logging
from personify.runtime import Runtime
from tests.api import basic_auth
from tests.conftest import make_settings

WRITE_KEY = "wk_access-log-write-key"
ADMIN = "pk_access-log-admin-secret"
USER_ID = "user-4242"
EMAIL = "ada.lovelace@example.com"


class Captured:
    """The access log's lines, as the process's JSON handler writes them."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("personify.access")
    previous = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    yield capture
    access.removeHandler(handler)
    access.setLevel(previous)


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path / "data", run_worker=False)
    services = Runtime.build(settings)
    app = logged(create_app(settings, services=services))
    await services.start()
    try:
        services.sources.create("web", write_key=WRITE_KEY)
        services.api_keys.create("ops", "admin", secret=ADMIN)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await services.close()


def _event(kind: str = "identify") -> dict[str, Any]:
    return {
        "type": kind,
        "userId": USER_ID,
        "event": "Signed Up",
        "traits": {"email": EMAIL, "name": "Ada"},
        "properties": {"email": EMAIL},
    }


async def test_one_json_line_per_request_without_pii(tmp_path: Path, captured: Captured) -> None:
    async with served(tmp_path) as client:
        auth = basic_auth(WRITE_KEY)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        answers = [
            # the collector's fast path, with a request id from the load balancer
            await client.post(
                "/v1/batch",
                json={"batch": [_event(), _event("track")]},
                headers={**auth, "X-Request-ID": "lb-7f3a9c0e-0001"},
            ),
            await client.post("/v1/track", json=_event("track"), headers=auth),
            # Litestar routes: a user id in the path and in the query string
            await client.get(f"/v1/profiles/{USER_ID}/events", headers=admin),
            await client.get(f"/v1/profiles/{USER_ID}", params={"email": EMAIL}, headers=admin),
            await client.get("/healthz"),
            # an id that is not sane (an e-mail address) is replaced, not echoed
            await client.get("/healthz", headers={"X-Request-ID": EMAIL}),
            await client.get(f"/nowhere/{USER_ID}"),
        ]
    lines = captured.lines()
    assert len(lines) == len(answers)
    for answer, line in zip(answers, lines, strict=True):
        assert set(line) >= {"time", "level", "logger", "message"}
        assert line["logger"] == "personify.access" and line["message"] == "request"
        assert line["request_id"] == answer.headers["X-Request-ID"]
        assert re.fullmatch(r"[A-Za-z0-9._:-]{8,128}", line["request_id"])
        assert line["status"] == answer.status_code
        assert line["method"] == answer.request.method
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0.0
    assert [answer.status_code for answer in answers[:2]] == [200, 200]
    assert lines[0]["request_id"] == "lb-7f3a9c0e-0001"
    assert answers[5].headers["X-Request-ID"] != EMAIL
    assert len({line["request_id"] for line in lines}) == len(lines)
    assert [line["route"] for line in lines] == [
        "/v1/batch",
        "/v1/track",
        "/v1/profiles/{id}/events",
        "/v1/profiles/{id}",
        "/healthz",
        "/healthz",
        UNMATCHED,
    ]
    assert lines[-1]["status"] == 404
    written = captured.text()
    for secret in (USER_ID, EMAIL, "Ada", "Signed Up", WRITE_KEY, ADMIN, "Basic", "Bearer", "?"):
        assert secret not in written, secret


def test_records_inside_a_request_carry_its_id() -> None:
    # the filter reads the id the access log set for the task handling the request
    from personify.api import access_log

    record = logging.LogRecord("personify.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    token = access_log._request_id.set("req-0123456789")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        access_log._request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-0123456789" and line["message"] == "hello w"
    text = TextFormatter().format(record)
    assert text.endswith("INFO personify.x: hello w request_id=req-0123456789")


def test_configure_logging_is_idempotent(tmp_path: Path) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        for _ in range(2):
            configure_logging(make_settings(tmp_path, log_format="text", log_level="warning"))
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
        assert root.level == logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
