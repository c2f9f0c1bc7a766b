"""Segment's and RudderStack's Python libraries, unmodified, against a revoked write key.

Both read ``code`` and ``message`` at the top level of an error answer, and decide from the
status whether to retry: Segment's retries only 408, 410, 429, 460 and 5xx; RudderStack's
gives up on a 4xx other than 429, but only when it could read the answer (a ``KeyError`` on
``code`` escapes as an unknown error, which it retries with exponential backoff). A revoked
key is permanent: each library must make one request, report the 401 with our code, and go
on. A proxy between the library and ``personify serve`` counts the requests.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess, cli, free_port, make_server
from tests.e2e.proxy import RecordingProxy

pytestmark = pytest.mark.e2e

# enough that a library retrying the 401 would make several requests within the wait below
MAX_RETRIES = 3
# the longest a library may take to report the error: past its first backoff delays
REPORT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A running server whose only source's write key has been revoked, and that key."""
    server = make_server(tmp_path_factory.mktemp("revoked") / "data")
    cli(server.env, "sources", "revoke", "e2e")
    server.start()
    yield server, server.write_key
    server.stop()


@pytest.fixture
def proxy(revoked: tuple[ServerProcess, str]) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the server."""
    server, _ = revoked
    recorder = RecordingProxy(server.base_url, free_port())
    recorder.start()
    yield recorder
    recorder.stop()


def sdk_client(
    module: str, write_key: str, host: str, on_error: Callable[[Exception, list[Any]], None]
) -> Any:
    """An unmodified server library's client (``segment.analytics.client`` or
    ``rudderstack.analytics.client``): both take the same options."""
    client_type = importlib.import_module(module).Client
    return client_type(
        write_key=write_key,
        host=host,
        on_error=on_error,
        max_retries=MAX_RETRIES,
        upload_interval=0.05,
        timeout=10,
    )


def segment_client(
    write_key: str, host: str, on_error: Callable[[Exception, list[Any]], None]
) -> Any:
    return sdk_client("segment.analytics.client", write_key, host, on_error)


def rudderstack_client(
    write_key: str, host: str, on_error: Callable[[Exception, list[Any]], None]
) -> Any:
    return sdk_client("rudderstack.analytics.client", write_key, host, on_error)


def api_error_class(library: str) -> type[Exception]:
    """The library's own exception for an error answer it could read."""
    if library == "segment":
        from segment.analytics.request import APIError as SegmentAPIError

        return SegmentAPIError
    from rudderstack.analytics.request import APIError as RudderAPIError

    return RudderAPIError


CLIENTS = {"segment": segment_client, "rudderstack": rudderstack_client}


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_a_revoked_key_is_a_permanent_error_to_the_library(
    revoked: tuple[ServerProcess, str], proxy: RecordingProxy, library: str
) -> None:
    _, write_key = revoked
    errors: list[tuple[Exception, list[Any]]] = []
    client = CLIENTS[library](write_key, proxy.base_url, lambda e, b: errors.append((e, b)))
    tag = uuid.uuid4().hex[:12]
    try:
        queued, _ = client.track(user_id=f"user-{tag}", event="Signed Up", properties={"t": tag})
        assert queued
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        client.flush()
    finally:
        client.join()

    assert len(errors) == 1, errors
    error, batch = errors[0]
    # the library read our answer: its own error class, with our status, code and message
    assert isinstance(error, api_error_class(library)), repr(error)
    assert getattr(error, "status", None) == 401
    assert getattr(error, "code", None) == "invalid_write_key"
    assert "revoked" in str(getattr(error, "message", ""))
    assert [message["properties"] for message in batch] == [{"t": tag}]
    # one request, no retry of a permanent error
    posts = proxy.requests("POST", "/v1/batch")
    assert [p.status for p in posts] == [401], posts


def test_a_known_key_still_delivers_through_both_libraries(tmp_path: Path) -> None:
    """The same clients against a live key: nothing reported, both events stored."""
    server = make_server(tmp_path / "data")
    server.start()
    try:
        tag = uuid.uuid4().hex[:12]
        errors: list[tuple[Exception, list[Any]]] = []
        for library, make in CLIENTS.items():
            client = make(server.write_key, server.base_url, lambda e, b: errors.append((e, b)))
            client.track(user_id=f"user-{tag}", event="Signed Up", properties={"via": library})
            client.flush()
            client.join()
        assert errors == []
        output = cli(server.env, "events", "tail", "-n", "50")
        assert output.count(f"user-{tag}") == 2, output
    finally:
        server.stop()
