"""Floods against a real ``personify serve``: slow clients, oversized heads and bodies, while
a normal client keeps getting its answers, and the server is alive after.

Everything talks to 127.0.0.1 only. The test waits out the server's head timeout once
(``HEAD_TIMEOUT_S``, 10 s), so it takes about 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from personify.cli.protocol import HEAD_TIMEOUT_S, MAX_HEAD_BYTES
from tests.api import basic_auth
from tests.e2e.conftest import ServerProcess, make_server

SLOW_CLIENTS = 200
# a byte every this many seconds: a head of a few hundred bytes would take minutes
SLOW_BYTE_INTERVAL_S = 0.05
BIG_HEAD_CLIENTS = 10
BIG_HEAD_BYTES = 100 * 1024
SLOW_BODY_CLIENTS = 20
# what a normal request may take while the floods run
ANSWER_BOUND_S = 1.0


@pytest.fixture(scope="module")
def flooded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = make_server(tmp_path_factory.mktemp("floods") / "data")
    server.start()
    yield server
    server.stop()


async def slow_head(port: int, opened: list[float], closed: list[float]) -> None:
    """Open a connection and send a head one byte at a time that never ends; record when
    the server closes it (after a 408 or without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append(time.monotonic())
    head = b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100_000

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(SLOW_BYTE_INTERVAL_S)

    sender = asyncio.ensure_future(trickle())
    try:
        answer = await reader.read()  # until the server closes
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
    except ConnectionResetError:
        pass
    closed.append(time.monotonic())
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await sender
    writer.close()


async def big_head(port: int) -> bytes:
    """Send a 100 KB header; the server's first bytes back (or b"" when it only closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        + b"b" * BIG_HEAD_BYTES
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    try:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(reader.read(200), timeout=5.0)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def slow_body(port: int, write_key_auth: str, stop: asyncio.Event) -> None:
    """Declare a batch body and send it a byte at a time until told to stop."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: {write_key_auth}\r\nContent-Length: 400000\r\n\r\n".encode()
    )
    try:
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def huge_body(port: int, write_key_auth: str) -> bytes:
    """Declare a 50 MB batch and send a little of it: the first bytes of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: {write_key_auth}\r\nContent-Length: 50000000\r\n\r\n".encode()
            + b"{" * 1000
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), timeout=5.0)
    finally:
        writer.close()


async def test_floods_never_take_the_api_down(flooded_server: ServerProcess) -> None:
    server = flooded_server
    port = server.port
    auth = basic_auth(server.write_key)
    opened: list[float] = []
    closed: list[float] = []
    started = time.monotonic()
    slow = [asyncio.ensure_future(slow_head(port, opened, closed)) for _ in range(SLOW_CLIENTS)]
    stop_bodies = asyncio.Event()
    bodies = [
        asyncio.ensure_future(slow_body(port, auth["Authorization"], stop_bodies))
        for _ in range(SLOW_BODY_CLIENTS)
    ]
    await asyncio.sleep(0.5)
    assert len(opened) == SLOW_CLIENTS  # every slow client is connected and trickling

    # a normal client keeps getting its answers while the floods run
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as client:
        deadline = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < deadline:
            sent = time.monotonic()
            response = await client.post(
                "/v1/track",
                json={
                    "type": "track",
                    "event": "Flood Probe",
                    "userId": "u1",
                    "messageId": f"p{n}",
                },
                headers=auth,
            )
            latencies.append(time.monotonic() - sent)
            assert response.status_code == 200, response.text
            n += 1
            if n % 10 == 0:
                # heads over the bound: a 431 or a closed connection, never a hang
                answers = await asyncio.gather(*(big_head(port) for _ in range(BIG_HEAD_CLIENTS)))
                for answer in answers:
                    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
                # a body declared over the bound: 413 at once, nothing read
                answer = await huge_body(port, auth["Authorization"])
                assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert n >= 20
        assert max(latencies) < ANSWER_BOUND_S, max(latencies)
        assert not closed, "a slow client was closed before its head timed out"

        # the slow heads are closed once the head timeout passes, all of them
        await asyncio.wait_for(
            asyncio.gather(*slow), timeout=HEAD_TIMEOUT_S + 3.0 - (time.monotonic() - started)
        )
        assert len(closed) == SLOW_CLIENTS
        waited = [c - o for o, c in zip(sorted(opened), sorted(closed), strict=True)]
        assert min(waited) >= HEAD_TIMEOUT_S - 0.5, min(waited)
        assert max(waited) <= HEAD_TIMEOUT_S + 2.0, max(waited)

        stop_bodies.set()
        await asyncio.gather(*bodies)
        # alive after, and still answering
        assert server.process is not None and server.process.poll() is None
        assert (await client.get("/healthz")).status_code == 200
        response = await client.post(
            "/v1/track",
            json={"type": "track", "event": "After", "userId": "u1"},
            headers=auth,
        )
        assert response.status_code == 200


async def test_a_head_just_under_the_bound_is_served(flooded_server: ServerProcess) -> None:
    # the bound is on the head, not on ordinary large headers
    padding = "c" * (MAX_HEAD_BYTES // 2)
    async with httpx.AsyncClient(base_url=flooded_server.base_url, timeout=5.0) as client:
        response = await client.get("/healthz", headers={"X-Padding": padding})
    assert response.status_code == 200
