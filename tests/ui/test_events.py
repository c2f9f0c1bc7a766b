"""The live events page through the real app: ingested events listed with the filters
applied, the page refused to roles without per-user reads, and the Server-Sent Events stream
over a real uvicorn socket delivering a newly ingested event within seconds, and the ones
appended while it was away after a reconnect."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from personify.auth.audit import AuditEntry
from personify.eventlog.base import LogEntry
from personify.ui.events import LogCursor
from tests.api import Harness, running_app
from tests.e2e.conftest import free_port
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def _track(name: str, user: str, **extra: object) -> dict[str, object]:
    return {"userId": user, "event": name, "properties": {"n": 1}, **extra}


async def _ingest(harness: Harness) -> None:
    client = harness.client
    for body, route in (
        (_track("Order Completed", "ann", anonymousId="dev-ann"), "/v1/track"),
        (_track("Product Viewed", "bob"), "/v1/track"),
        ({"anonymousId": "dev-cy", "name": "Home"}, "/v1/page"),
        ({"userId": "ann", "traits": {"email": "ann@example.com"}}, "/v1/identify"),
    ):
        response = await client.post(route, json=body, headers=harness.auth)
        assert response.status_code == 200, response.text


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr class="event-row"(.*?)</tr>', html, flags=re.S)


async def test_the_page_lists_the_newest_events_with_the_filters_applied(
    harness: Harness,
) -> None:
    await _ingest(harness)
    await sign_in(harness.client, harness.admin_secret)
    client = harness.client

    page = await client.get("/console/events")
    assert page.status_code == 200
    rows = _rows(page.text)
    assert len(rows) == 4
    # newest first: the identify came last
    assert "identify" in rows[0] and "Order Completed" in rows[-1]
    assert 'sse-connect="/console/events/stream?after=' in page.text
    # PII as stored: the email was hashed at ingest
    assert "ann@example.com" not in page.text

    by_name = await client.get("/console/events", params={"name": "Order Completed"})
    assert [("Order Completed" in row) for row in _rows(by_name.text)] == [True]
    # the stream follows the same filter
    assert "name=Order+Completed" in by_name.text

    by_type = await client.get("/console/events", params={"type": "page"})
    assert len(_rows(by_type.text)) == 1 and "dev-cy" in by_type.text

    by_user = _rows((await client.get("/console/events", params={"user": "ann"})).text)
    assert len(by_user) == 2
    by_device = _rows((await client.get("/console/events", params={"user": "dev-ann"})).text)
    assert len(by_device) == 1

    mine = await client.get("/console/events", params={"source": harness.source.id})
    assert len(_rows(mine.text)) == 4
    other, _ = harness.services.sources.create("other")
    theirs = await client.get("/console/events", params={"source": other.id})
    assert _rows(theirs.text) == [] and "No matching events yet." in theirs.text


async def test_roles_without_per_user_reads_are_refused(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("events-viewer", "viewer")
    await sign_in(harness.client, secret)
    for path in ("/console/events", "/console/events/stream"):
        response = await harness.client.get(path, follow_redirects=False)
        assert response.status_code == 403, path


def test_the_cursor_orders_offsets_per_partition_and_survives_its_text() -> None:
    def entry(partition: int, offset: str) -> LogEntry:
        return LogEntry(partition, offset, "k", b"{}", 0.0)

    cursor = LogCursor.after([entry(0, "9"), entry(0, "10"), entry(1, "1700000000000-1")])
    assert cursor.offsets == {0: "10", 1: "1700000000000-1"}
    assert not cursor.is_new(entry(0, "9")) and cursor.is_new(entry(0, "11"))
    assert cursor.is_new(entry(1, "1700000000000-2")) and cursor.is_new(entry(2, "0"))
    assert LogCursor.parse(cursor.text()) == cursor
    for bad in ("", "x:1", "0:", "0:abc", "0" * 5000):
        assert LogCursor.parse(bad) is None


# -- the stream, from a real server ----------------------------------------------------------


@dataclass
class Served:
    """The harness's app behind a real uvicorn server on a free port (the in-process ASGI
    transport answers only once the whole response is in, so a stream needs a socket)."""

    harness: Harness
    base_url: str


@pytest.fixture
async def served(harness: Harness) -> AsyncIterator[Served]:
    app = harness.client._transport.app  # type: ignore[attr-defined]
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield Served(harness, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def _messages(response: httpx.Response, into: list[dict[str, str]]) -> None:
    """Parse Server-Sent Events from ``response`` into ``into`` until it ends."""
    message: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if message:
                into.append(message)
            message = {}
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            message["data"] = message.get("data", "") + value
        else:
            message[field or "comment"] = value


async def _wait_for(
    messages: list[dict[str, str]], text: str, timeout_s: float = 6.0
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for message in messages:
            if message.get("event") == "event" and text in message.get("data", ""):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no event with {text!r} within {timeout_s}s: {messages}")


async def test_the_stream_delivers_new_matching_events_and_resumes_after_a_reconnect(
    served: Served,
) -> None:
    harness = served.harness
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as client:
        await sign_in(client, harness.admin_secret, next_path="/console/events")

        async def send(name: str) -> None:
            response = await client.post(
                "/v1/track", json=_track(name, "sse-user"), headers=harness.auth
            )
            assert response.status_code == 200, response.text

        messages: list[dict[str, str]] = []
        params = {"name": "Live Signal"}
        async with client.stream("GET", "/console/events/stream", params=params) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(_messages(response, messages))
            try:
                # the first message asks the browser to reconnect quickly
                deadline = time.monotonic() + 5
                while not messages and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert messages and messages[0].get("retry") == "1000"
                started = time.monotonic()
                await send("Not This One")
                await send("Live Signal")
                found = await _wait_for(messages, "Live Signal")
                assert time.monotonic() - started < 5
                assert "sse-user" in found["data"] and '<tr class="event-row"' in found["data"]
                assert all("Not This One" not in m.get("data", "") for m in messages)
            finally:
                reader.cancel()
        last_id = found["id"]

        # away for a while: an EventSource reconnects with the last id and misses nothing
        await send("Live Signal")
        await asyncio.sleep(0.2)
        again: list[dict[str, str]] = []
        headers = {"Last-Event-ID": last_id}
        async with client.stream(
            "GET", "/console/events/stream", params=params, headers=headers
        ) as response:
            reader = asyncio.create_task(_messages(response, again))
            try:
                resumed = await _wait_for(again, "Live Signal")
                assert resumed["id"] != last_id
            finally:
                reader.cancel()

        # both streams ended on the server when their clients went away: the audit log
        # records a request once its handler has returned
        deadline = time.monotonic() + 5
        while len(_stream_reads(harness)) < 2:
            assert time.monotonic() < deadline, "a stream outlived its client"
            await asyncio.sleep(0.05)
        assert all(entry.record.status == 200 for entry in _stream_reads(harness))
        assert (await client.get("/console/events")).status_code == 200


def _stream_reads(harness: Harness) -> list[AuditEntry]:
    return harness.services.audit.query(action="GET /console/events/stream", limit=10)
