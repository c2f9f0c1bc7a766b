"""The console's overview through the real app over HTTP: events sent through the collector
and written to the lake by the lake sink appear in the events-per-minute series under their
source's name, in the current minute; the page shows the worker's lag, the dead letters and
the freshness the worker measured, and its numbers read without JavaScript."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personify.worker.freshness import RecentFreshness
from tests.api import Harness, basic_auth, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=True, lake_linger_ms=10) as h:
        yield h


def _track(number: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{number % 3}",
        "messageId": f"overview-{number}",
        "properties": {"sku": f"sku-{number}"},
    }


async def _send(harness: Harness, events: list[dict[str, Any]], write_key: str) -> None:
    response = await harness.client.post(
        "/v1/batch",
        json={"batch": events},
        headers=basic_auth(write_key),
    )
    assert response.status_code == 200, response.text


async def _write_lake(harness: Harness) -> None:
    sink = harness.services.lake_sink
    assert sink is not None
    while (await sink.process_once()).read:
        pass


def _chart_data(html: str) -> dict[str, Any]:
    found = re.search(
        r'<script type="application/json" id="events-per-minute-data">(.*?)</script>', html, re.S
    )
    assert found, html[:1000]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


async def test_the_series_counts_each_sources_events_in_the_current_minute(
    harness: Harness,
) -> None:
    client = harness.client
    await sign_in(client, harness.admin_secret)
    _, mobile_key = harness.services.sources.create("mobile-app")
    before = await client.get("/console/overview/series")
    assert before.status_code == 200
    assert before.json()["series"] == [] and len(before.json()["x"]) == 60

    await _send(harness, [_track(i) for i in range(7)], harness.write_key)
    await _send(harness, [_track(100 + i) for i in range(3)], mobile_key)
    await _write_lake(harness)
    minute = int(time.time()) // 60 * 60

    response = await client.get("/console/overview/series")
    assert response.status_code == 200
    assert "no-store" in response.headers["cache-control"]
    data = response.json()
    assert data["unit"] == "events/min"
    assert len(data["x"]) == 60 and data["x"] == sorted(data["x"])
    assert data["x"][1] - data["x"][0] == 60
    # the collector stamped them moments ago: they are in the current minute (or, when the
    # minute turned while the test ran, the one before)
    assert data["x"][-1] in (minute, minute + 60)
    by_label = {s["label"]: s["values"] for s in data["series"]}
    assert set(by_label) == {"web", "mobile-app"}
    assert sum(by_label["web"][-2:]) == 7 and sum(by_label["mobile-app"][-2:]) == 3
    assert sum(by_label["web"][:-2]) == 0
    # the busiest source comes first
    assert [s["label"] for s in data["series"]] == ["web", "mobile-app"]

    page = await client.get("/console")
    assert page.status_code == 200
    assert _chart_data(page.text)["series"] == data["series"]
    # readable without JavaScript: the numbers in a table, and the total
    assert "<caption>Events per minute by source, newest minute first</caption>" in page.text
    assert re.search(r'id="events-last-hour">.*?<div class="value">10</div>', page.text, re.S)
    assert 'data-refresh="/console/overview/series"' in page.text


async def test_the_overview_shows_lag_dead_letters_and_freshness(harness: Harness) -> None:
    client = harness.client
    await _send(harness, [_track(i) for i in range(5)], harness.write_key)
    # a rejected event is dead-lettered at ingest, and the rest of its batch is kept
    await _send(harness, [_track(10), {"type": "track", "messageId": "bad"}], harness.write_key)
    await sign_in(client, harness.admin_secret)

    page = await client.get("/console")
    assert page.status_code == 200
    assert re.search(r'id="worker-lag">6<', page.text), page.text[:3000]
    letters = re.search(
        r'id="dead-letters">.*?<div class="value[^"]*">(\d+)</div>', page.text, re.S
    )
    assert letters and letters.group(1) == "1"
    assert 'href="/console/failed"' in page.text
    assert "rejected events in the last hour: 1" in page.text
    assert "<td>ingest</td>" in page.text

    # the lake sink has not written them yet
    lake_lag = r'id="lake-lag">\s*<div class="label">Lake sink lag</div>\s*<div class="value">{}<'
    assert re.search(lake_lag.format(6), page.text)

    await harness.services.worker.run(until_idle=True)
    await _write_lake(harness)
    page = await client.get("/console")
    assert re.search(r'id="worker-lag">0<', page.text)
    assert re.search(lake_lag.format(0), page.text)
    assert re.search(r"events not in the lake yet; newest arrived [\d.]+ m?s ago", page.text)
    freshness = re.search(r'id="freshness">.*?<div class="value">([^<]+)</div>', page.text, re.S)
    assert freshness and freshness.group(1).endswith(("ms", " s")), freshness.group(1)
    assert "6 events (p50" in page.text


async def test_a_viewer_sees_the_overview_without_links_to_ops_pages(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("console-viewer", "viewer")
    await sign_in(harness.client, secret)
    page = await harness.client.get("/console")
    assert page.status_code == 200
    assert 'href="/console/failed"' not in page.text
    assert (await harness.client.get("/console/overview/series")).status_code == 200
    _, service = harness.services.api_keys.create("console-service", "service")
    harness.client.cookies.clear()
    await sign_in(harness.client, service, next_path="/console/login")
    refused = await harness.client.get(
        "/console/overview/series", headers={"Accept": "application/json"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_recent_freshness_keeps_the_last_minutes_only() -> None:
    recent = RecentFreshness(window_s=60.0, slot_s=10.0)
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert recent.summary(now=now).p99_s is None
    recent.observe_many(np.full(99, 0.05), now=now)
    recent.observe_many(np.array([2.0]), now=now + 5)
    summary = recent.summary(now=now + 5)
    assert summary.count == 100
    assert summary.p50_s is not None and 0.05 <= summary.p50_s < 0.05 * 1.05
    assert summary.p99_s is not None and 0.05 <= summary.p99_s < 0.05 * 1.05
    assert (recent.quantile(1.0, now=now + 5) or 0.0) >= 2.0
    # a minute later those slots are out of the window, and reused
    later = now + 65
    recent.observe_many(np.array([0.3]), now=later)
    assert recent.summary(now=later).count == 1
    assert recent.summary(now=later + 120).count == 0
