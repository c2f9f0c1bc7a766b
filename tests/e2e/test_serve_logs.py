"""``personify serve`` logs JSON lines: every line of the process (uvicorn's included) is one
JSON object, and every request one access line with its request id and route template,
without the user id, the e-mail address or the keys the requests carried."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.e2e.conftest import make_server

USER_ID = "e2e-user-5150"
EMAIL = "grace.hopper@example.com"


def test_serve_writes_one_json_line_per_request(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", "--no-worker", "--log-level", "info")
    server.start(timeout_s=120.0)
    try:
        event = {"userId": USER_ID, "event": "Signed Up", "properties": {"email": EMAIL}}
        tracked = httpx.post(
            f"{server.base_url}/v1/track",
            json=event,
            auth=(server.write_key, ""),
            headers={"X-Request-ID": "e2e-request-0001"},
        )
        assert tracked.status_code == 200, tracked.text
        assert tracked.headers["X-Request-ID"] == "e2e-request-0001"
        profile = httpx.get(
            f"{server.base_url}/v1/profiles/{USER_ID}",
            params={"email": EMAIL},
            headers={"Authorization": f"Bearer {server.admin_key}"},
        )
        assert profile.status_code in (200, 404), profile.text
    finally:
        server.stop()
    lines = (server.data_dir / f"server-{server.port}.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    access = [r for r in records if r["logger"] == "personify.access"]
    by_route = {r["route"]: r for r in access}
    assert by_route["/v1/track"]["request_id"] == "e2e-request-0001"
    assert by_route["/v1/track"]["status"] == 200
    assert by_route["/v1/profiles/{id}"]["request_id"] == profile.headers["X-Request-ID"]
    assert by_route["/v1/profiles/{id}"]["status"] == profile.status_code
    assert any(r["logger"].startswith("uvicorn") for r in records)
    # uvicorn's own access log (raw paths, client addresses) stays off
    assert not any(r["logger"] == "uvicorn.access" for r in records)
    assert not any("color_message" in r for r in records)
    text = "\n".join(lines)
    for secret in (USER_ID, EMAIL, server.write_key, server.admin_key):
        assert secret not in text
