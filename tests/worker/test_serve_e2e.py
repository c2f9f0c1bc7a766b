"""End to end: a real ``personify serve`` with its in-process worker, driven over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import make_server

pytestmark = pytest.mark.e2e


def wait_for(
    client: httpx.Client,
    path: str,
    check: Callable[[dict[str, Any]], bool],
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(path)
        if response.status_code == 200:
            body = response.json()
            if check(body):
                return body
        time.sleep(0.02)
    raise AssertionError(f"{path} never satisfied the check; last answer {body}")


@pytest.mark.parametrize("no_worker", [False, True])
def test_serve_applies_events_unless_no_worker(tmp_path: Path, no_worker: bool) -> None:
    server = make_server(tmp_path / "data", *(["--no-worker"] if no_worker else []))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            events = [
                {"type": "page", "anonymousId": "anon-e2e", "properties": {"category": "hats"}},
                {"type": "identify", "anonymousId": "anon-e2e", "userId": "user-e2e"},
            ]
            accepted = client.post("/v1/batch", json={"batch": events}, auth=(server.write_key, ""))
            assert accepted.status_code == 200
            client.headers["Authorization"] = f"Bearer {server.admin_key}"
            if no_worker:
                time.sleep(1.0)
                assert client.get("/v1/profiles/anon-e2e").status_code == 404
                status = client.get("/v1/worker/status").json()
                assert status["inProcess"] is None
                assert status["lag"] == 2
                return
            profile = wait_for(
                client,
                "/v1/profiles/anon-e2e",
                lambda body: body["features"]["events_total"] == 2,
            )
            assert profile["profileId"] == "user-e2e"
            assert profile["ids"]["anonymousIds"] == ["anon-e2e"]
            # the profile is visible once the state commits; the log commit follows it
            status = wait_for(client, "/v1/worker/status", lambda body: body["lag"] == 0)
            assert status["inProcess"]["running"] is True
    finally:
        server.stop()
