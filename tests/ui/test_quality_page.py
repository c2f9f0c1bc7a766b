"""The console's data quality and lineage page through the real app over HTTP: running the
lake checks from the page records a run whose checks are listed, the runs chart has its
points, and the lineage records are drawn as an SVG graph naming every dataset."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.quality.lineage import LineageRepository
from tests.api import Harness, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=True, lake_linger_ms=10) as h:
        yield h


def _chart(html: str, chart_id: str) -> dict[str, Any]:
    found = re.search(rf'<script type="application/json" id="{chart_id}">(.*?)</script>', html)
    assert found, html[:1000]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


async def _fill_lake(harness: Harness) -> None:
    events = [
        {"type": "track", "event": "Viewed", "userId": f"u{i}", "messageId": f"q{i}"}
        for i in range(12)
    ]
    response = await harness.client.post("/v1/batch", json={"batch": events}, headers=harness.auth)
    assert response.status_code == 200, response.text
    sink = harness.services.lake_sink
    assert sink is not None
    while (await sink.process_once()).read:
        pass


async def test_running_the_checks_from_the_page_lists_the_runs_checks(harness: Harness) -> None:
    client = harness.client
    csrf = await sign_in(client, harness.admin_secret, next_path="/console/quality")
    empty = await client.get("/console/quality")
    assert empty.status_code == 200
    assert "No quality run has been recorded yet" in empty.text
    assert 'action="/console/quality/check"' in empty.text

    # on an empty lake the critical check fails, and the page lists it first
    failing = await client.post(
        "/console/quality/check", data={"csrf": csrf}, follow_redirects=True
    )
    assert failing.status_code == 200 and str(failing.url).endswith("?checked=failed")
    assert "Failing checks of the lake run" in failing.text
    assert re.search(r"<code>has_events</code>.*?badge bad\">fail<", failing.text, re.S)

    await _fill_lake(harness)
    # a form without the session's token changes nothing
    refused = await client.post("/console/quality/check", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    response = await client.post(
        "/console/quality/check", data={"csrf": csrf}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console/quality?checked=passed"

    page = await client.get(response.headers["location"])
    assert page.status_code == 200
    assert "The lake checks ran: <strong>passed</strong>" in page.text
    # the lake-wide run, with its checks and what they observed
    lake_run = re.search(r'<article class="quality-run"[^>]*>.*?</article>', page.text, re.S)
    assert lake_run and "All 17 checks passed." in lake_run.group(0)
    assert lake_run and "</span> lake <span" in lake_run.group(0), page.text[:4000]
    assert "<code>has_events</code>" in lake_run.group(0)
    assert "12 events" in lake_run.group(0)
    assert '<span class="badge ok">pass</span>' in lake_run.group(0)
    # the lake sink checked its batch too: both stages are in the history and the charts
    assert "</span> lake_batch <span" in page.text
    rows = _chart(page.text, "quality-rows-data")
    assert {s["label"] for s in rows["series"]} == {"lake", "lake_batch"}
    assert len(rows["x"]) >= 1 and rows["unit"] == "rows"
    by_stage = {s["label"]: [v for v in s["values"] if v is not None] for s in rows["series"]}
    assert by_stage["lake_batch"] == [12]
    failed = _chart(page.text, "quality-failed-data")
    failures = {s["label"]: [v for v in s["values"] if v is not None] for s in failed["series"]}
    # the lake's failed run, then its passing one; the sink's batch passed
    assert len(failures["lake"]) == 2 and failures["lake"][0] >= 1 and failures["lake"][1] == 0
    assert failures["lake_batch"] == [0]


async def test_the_lineage_graph_names_every_dataset(harness: Harness) -> None:
    services = harness.services
    lineage = LineageRepository(services.db, clock=services.clock)
    features = lineage.record(
        "feature_table",
        lake_uri="/data/lake",
        lake_versions={"events": 4},
        time_start=None,
        time_end=services.clock.now() - timedelta(days=1),
        parameters={"as_of": "2026-01-01T00:00:00Z"},
        output="/data/features/churn-2026-01-01.parquet",
        row_count=120,
    )
    lineage.record(
        "erasure_rewrite",
        lake_uri=None,
        lake_versions={},
        time_start=None,
        time_end=None,
        parameters={"rows_removed": 1},
        inputs=[features.id],
        output="/data/features/churn-erased.parquet",
        row_count=119,
    )
    await sign_in(harness.client, harness.admin_secret)
    page = await harness.client.get("/console/quality")
    assert page.status_code == 200
    svg = re.search(r"<svg [^>]*class=\"lineage\".*?</svg>", page.text, re.S)
    assert svg, page.text[-3000:]
    drawn = svg.group(0)
    # the lake, the feature table and its rewrite: three boxes, two derived-from arrows
    assert drawn.count("<rect ") == 3 and drawn.count('class="lineage-edge"') == 2
    for name in ("events", "churn-2026-01-01.parquet", "churn-erased.parquet"):
        assert f">{name}</text>" in drawn, name
    assert "events v4" in drawn
    # columns left to right: the lake, the table, its rewrite
    xs = [int(x) for x in re.findall(r'<rect x="(\d+)"', drawn)]
    assert xs == sorted(xs) and len(set(xs)) == 3
    # the records as a table, for reading without the picture
    assert features.id[:12] in page.text and "erasure_rewrite" in page.text


async def test_roles_without_ops_scopes_cannot_see_or_run_the_checks(harness: Harness) -> None:
    client = harness.client
    _, analyst = services_key(harness, "analyst")
    csrf = await sign_in(client, analyst, next_path="/console/quality")
    page = await client.get("/console/quality")
    assert page.status_code == 200
    # an analyst reads ops but may not run jobs
    assert 'action="/console/quality/check"' not in page.text
    denied = await client.post(
        "/console/quality/check", data={"csrf": csrf}, follow_redirects=False
    )
    assert denied.status_code == 403
    client.cookies.clear()
    _, viewer = services_key(harness, "viewer")
    await sign_in(client, viewer)
    assert (await client.get("/console/quality")).status_code == 403


def services_key(harness: Harness, role: str) -> tuple[Any, str]:
    key, secret = harness.services.api_keys.create(f"console-{role}", role)
    return key, secret
