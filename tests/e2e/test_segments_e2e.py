"""Segments end to end, over HTTP against a real ``personify serve``: a rule saved through the
API, an event in, ``Segment Entered`` in the log, the segment in the profile, a rule saved
later backfilled, then the exit when the window slides past, with no further event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, cli, make_server

pytestmark = pytest.mark.e2e

WINDOW_S = 15


@pytest.fixture
def segment_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = make_server(
        tmp_path / "data",
        PERSONIFY_SEGMENT_SWEEP_INTERVAL_S="0.5",
        PERSONIFY_SEGMENT_RELAY_INTERVAL_S="0.5",
        PERSONIFY_SEGMENT_BACKFILL_INTERVAL_S="0.5",
        PERSONIFY_WORKER_POLL_TIMEOUT_MS="100",
    )
    server.start()
    yield server
    server.stop()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_an_event_enters_a_segment_and_the_window_takes_it_out(
    segment_server: ServerProcess,
) -> None:
    server = segment_server
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        created = client.post(
            "/v1/segments",
            headers=admin,
            json={
                "key": "recent-buyers",
                "name": "Recent buyers",
                "condition": {
                    "event": "Order Completed",
                    "where": [{"property": "total", "op": "gte", "value": 50}],
                    "within": f"{WINDOW_S}s",
                },
            },
        )
        assert created.status_code == 201, created.text
        # a rule that cannot be read is refused with where it went wrong
        refused = client.post(
            "/v1/segments",
            headers=admin,
            json={"key": "broken", "condition": {"trait": "plan", "op": "equals", "value": 1}},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"]["errors"][0]["pointer"] == "/op"

        track = client.post(
            "/v1/track",
            auth=(server.write_key, ""),
            json={"userId": "u1", "event": "Order Completed", "properties": {"total": 80}},
        )
        assert track.status_code == 200, track.text
        sent_at = time.monotonic()

        def segments() -> list[dict[str, Any]]:
            response = client.get("/v1/profiles/u1", headers=admin)
            return response.json().get("segments", []) if response.status_code == 200 else []

        inside = wait_for("the entry", segments, 10)
        assert [s["key"] for s in inside] == ["recent-buyers"]

        def membership_events() -> list[dict[str, Any]]:
            lines = cli(server.env, "events", "tail", "-n", "500").splitlines()
            logged = [json.loads(line) for line in lines if line.strip()]
            return [e for e in logged if str(e.get("event", "")).startswith("Segment ")]

        entered = wait_for("Segment Entered in the timeline", membership_events, 10)
        assert entered[0]["event"] == "Segment Entered"
        assert entered[0]["properties"] == {
            "segment": "recent-buyers",
            "version": 1,
            "reason": "rule",
        }

        # a rule saved after the event: the backfill evaluates the stored profile, counting
        # the order from its timeline
        later = client.post(
            "/v1/segments",
            headers=admin,
            json={"key": "buyers", "condition": {"event": "Order Completed"}},
        )
        assert later.status_code == 201, later.text
        assert later.json()["backfill"]["status"] == "pending"

        def backfilled() -> dict[str, Any] | None:
            shown = client.get("/v1/segments/buyers", headers=admin).json()
            return shown if shown["backfill"]["status"] == "done" else None

        assert wait_for("the backfill", backfilled, 15)["backfill"]["total"] >= 1
        assert "buyers" in {s["key"] for s in segments()}

        # no more events: the sweep takes the profile out once the order leaves the window
        wait_for(
            "the exit", lambda: "recent-buyers" not in {s["key"] for s in segments()}, WINDOW_S + 15
        )
        assert time.monotonic() - sent_at >= WINDOW_S - 1
        exited = wait_for(
            "Segment Exited in the log",
            lambda: [e for e in membership_events() if e["event"] == "Segment Exited"],
            10,
        )
        assert exited[0]["properties"]["reason"] == "sweep"
        assert exited[0]["properties"]["segment"] == "recent-buyers"
        # an all-time rule keeps the profile
        assert [s["key"] for s in segments()] == ["buyers"]

        members = client.get("/v1/segments/recent-buyers/members", headers=admin)
        assert members.status_code == 200 and members.json()["data"] == []
        stats = client.get("/v1/segments/recent-buyers/stats", headers=admin).json()
        assert stats["size"] == 0
        # they are facts about the profile, not the user's activity: not in its timeline
        timeline = client.get("/v1/profiles/u1/events", headers=admin).json()["data"]
        assert [e.get("event") for e in timeline] == ["Order Completed"]
        assert (stats["size"], stats["entries"], stats["exits"]) == (0, 1, 1)
    server.stop()
    log_text = b"".join(p.read_bytes() for p in server.data_dir.glob("server-*.log"))
    assert b"Traceback" not in log_text, log_text.decode("utf-8", "replace")[-3000:]
