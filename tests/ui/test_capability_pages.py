"""The console's segment, prediction, content and experiment pages through the real app over
HTTP: what the API saved is what the pages list and detail, members show only to a role
that may read per-user data (and that read is audited), the experiment buttons start and
stop through the same service with the session's CSRF token, and a role without a page's
scope gets 403."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.clock import FrozenClock
from tests.api import Harness, running_app
from tests.api.test_experiments import decide, hero_test, send, settle, shop
from tests.api.test_segments import add_members, create
from tests.predict.test_stage import churn_model
from tests.ui import sign_in

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PRO = {"trait": "plan", "op": "eq", "value": "pro"}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def client_for(harness: Harness) -> httpx.AsyncClient:
    """A second browser on the same app (its own cookies)."""
    return httpx.AsyncClient(
        transport=harness.client._transport, base_url=str(harness.client.base_url)
    )


@contextlib.asynccontextmanager
async def as_role(harness: Harness, role: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in with a new key of ``role``."""
    _, secret = harness.services.api_keys.create(f"console-{role}", role)
    async with client_for(harness) as client:
        await sign_in(client, secret, next_path="/console/segments")
        yield client


async def page(client: httpx.AsyncClient, path: str, status: int = 200) -> str:
    response = await client.get(path, follow_redirects=False)
    assert response.status_code == status, (path, response.status_code, response.text[:800])
    return response.text


def chart_data(html: str, chart_id: str) -> dict[str, Any]:
    found = re.search(rf'<script type="application/json" id="{chart_id}">(.*?)</script>', html)
    assert found, html[:500]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


async def test_segments_list_and_detail_show_definition_size_and_history(
    harness: Harness,
) -> None:
    await create(harness, "pros", PRO, name="Pro plan", description="people on the pro plan")
    add_members(harness, "pros", [{"profile_id": "p1"}, {"profile_id": "p2"}])
    # one who left two days ago, after a stay of three days
    now = datetime.now(UTC)
    add_members(
        harness,
        "pros",
        [
            {
                "profile_id": "p0",
                "entered_at": now - timedelta(days=5),
                "exited_at": now - timedelta(days=2),
                "exit_reason": "evaluated",
            }
        ],
    )
    response = await harness.client.post(
        "/v1/clusterings",
        json={"key": "shoppers", "features": ["orders.all", "revenue.all"], "schedule": "manual"},
        headers=harness.admin,
    )
    assert response.status_code == 201, response.text
    await sign_in(harness.client, harness.admin_secret)
    listing = await page(harness.client, "/console/segments")
    assert 'href="/console/segments/pros"' in listing and "Pro plan" in listing
    row = listing.split('href="/console/segments/pros"')[1].split("</tr>")[0]
    assert '<td class="num">2</td>' in row
    # the condition, pretty-printed and escaped
    assert "&#34;trait&#34;: &#34;plan&#34;" in listing
    clusterings = listing.split('id="clustering-list"')[1].split("</section>")[0]
    assert "<code>shoppers</code>" in clusterings and "not run yet" in clusterings
    assert "&#34;orders.all&#34;" in clusterings and "manual" in clusterings

    detail = await page(harness.client, "/console/segments/pros")
    assert "people on the pro plan" in detail
    assert 'id="segment-size">2<' in detail
    data = chart_data(detail, "segment-size-data")
    sizes = data["series"][0]["values"]
    assert len(data["x"]) == len(sizes) == 30 and sizes[-1] == 2
    # p0 alone was a member at the ends of the days three and four days ago
    assert sizes.count(1) in (2, 3) and sizes[0] == 0
    # the numbers without JavaScript too
    assert "<summary>The numbers</summary>" in detail
    # an admin may read members: the page loads them and links to them
    assert 'hx-get="/console/segments/pros/members"' in detail

    members = await page(harness.client, "/console/segments/pros/members")
    assert "<code>p1</code>" in members and "<code>p2</code>" in members
    assert "<code>p0</code>" not in members
    fragment = await harness.client.get(
        "/console/segments/pros/members", headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "<code>p1</code>" in fragment.text
    # the members read is audited; the definition reads are not
    actions = [e.to_document()["action"] for e in harness.services.audit.query(limit=100)]
    reads = [action for action in actions if action.startswith("GET ")]
    assert reads == ["GET /console/segments/{key}/members"] * 2, actions

    for path in (
        "/console/segments/nope",
        "/console/segments/shoppers/c0",
        "/console/segments/shoppers/c0/members",
    ):
        missing = await harness.client.get(path, follow_redirects=False)
        assert missing.status_code == 404 and "segment_not_found" in missing.text, path

    # a cluster's segment, as a clustering run saves it, has a two-part key
    with harness.services.db.begin() as conn:
        harness.services.segments.save_clusters(
            conn, "shoppers", 1, [("c0", "Big spenders", "many orders")]
        )
    add_members(harness, "shoppers/c0", [{"profile_id": "p7"}])
    cluster = await page(harness.client, "/console/segments/shoppers/c0")
    assert "Big spenders" in cluster and 'id="segment-size">1<' in cluster
    assert "computed by its job" in cluster
    assert 'hx-get="/console/segments/shoppers/c0/members"' in cluster
    members = await page(harness.client, "/console/segments/shoppers/c0/members")
    assert "<code>p7</code>" in members
    listing = await page(harness.client, "/console/segments")
    assert 'href="/console/segments/shoppers/c0"' in listing


async def test_a_viewer_sees_segments_but_not_their_members(harness: Harness) -> None:
    await create(harness, "pros", PRO)
    add_members(harness, "pros", [{"profile_id": "p1"}])
    async with as_role(harness, "viewer") as viewer:
        detail = await page(viewer, "/console/segments/pros")
        assert 'id="segment-size">1<' in detail
        assert "/console/segments/pros/members" not in detail
        assert "does not grant <code>profiles:read</code>" in detail
        assert "p1" not in detail
        refused = await page(viewer, "/console/segments/pros/members", 403)
        assert "profiles:read" in refused and "p1" not in refused


async def test_content_pages_list_filter_and_detail_items(harness: Harness) -> None:
    await shop(harness)
    response = await harness.client.post(
        "/v1/content",
        json={
            "id": "guide-1",
            "type": "article",
            "fields": {"title": "How to <choose> shoes"},
            "tags": ["guides", "shoes"],
        },
        headers=harness.admin,
    )
    assert response.status_code == 201, response.text
    response = await harness.client.patch(
        "/v1/content/items/guide-1",
        json={"fields": {"title": "How to choose shoes, again"}},
        headers=harness.admin,
    )
    assert response.status_code == 200, response.text
    await sign_in(harness.client, harness.admin_secret, next_path="/console/content")

    listing = await page(harness.client, "/console/content")
    assert "<code>home-hero</code>" in listing
    assert 'href="/console/content/items/generic">generic</a>' in listing
    for item_id in ("generic", "hero-a", "hero-b", "guide-1"):
        assert f"<code>{item_id}</code>" in listing
    assert "Editing stays in the API" in listing

    articles = await page(harness.client, "/console/content?type=article")
    assert "<code>guide-1</code>" in articles and "<code>hero-a</code>" not in articles
    drafts = await page(harness.client, "/console/content?status=draft&type=")
    assert "<code>guide-1</code>" in drafts and "<code>generic</code>" not in drafts
    assert '<option value="draft" selected>' in drafts
    bad = await harness.client.get("/console/content?status=lost", follow_redirects=False)
    assert bad.status_code == 400 and "invalid_parameter" in bad.text

    item = await page(harness.client, "/console/content/items/guide-1")
    assert "How to choose shoes, again" in item
    assert "guides, shoes" in item
    # both versions, the first one's fields escaped
    assert "How to &lt;choose&gt; shoes" in item
    versions = item.split('id="item-versions"')[1]
    assert versions.count('<td class="num">') >= 2
    assert (await harness.client.get("/console/content/items/nope")).status_code == 404


async def test_experiment_pages_start_stop_with_csrf_and_show_definition(
    harness: Harness,
) -> None:
    await shop(harness)
    response = await harness.client.post("/v1/experiments", json=hero_test(), headers=harness.admin)
    assert response.status_code == 201, response.text
    csrf = await sign_in(harness.client, harness.admin_secret, next_path="/console/experiments")

    listing = await page(harness.client, "/console/experiments")
    assert 'href="/console/experiments/hero-test"' in listing
    assert "control (1), delivery (1)" in listing and ">draft<" in listing

    detail = await page(harness.client, "/console/experiments/hero-test")
    assert "Free delivery sells more than a sale" in detail
    assert "Not started yet" in detail
    assert 'action="/console/experiments/hero-test/start"' in detail

    # a form without the session's token changes nothing
    refused = await harness.client.post(
        "/console/experiments/hero-test/start", data={"csrf": "nope"}
    )
    assert refused.status_code == 403 and "csrf_failed" in refused.text
    assert harness.services.experiments.repository.get("hero-test")["status"] == "draft"

    started = await harness.client.post(
        "/console/experiments/hero-test/start", data={"csrf": csrf}, follow_redirects=False
    )
    assert started.status_code == 303
    assert started.headers["location"] == "/console/experiments/hero-test?notice=started"
    assert harness.services.experiments.repository.get("hero-test")["status"] == "running"
    # the decision engine serves the experiment at once, as after the API's start
    assert (await decide(harness, userId="u1"))["experiment"]["key"] == "hero-test"
    running = await page(harness.client, started.headers["location"])
    assert "The experiment is running" in running
    assert 'id="experiment-status">running<' in running
    assert 'action="/console/experiments/hero-test/stop"' in running
    assert 'id="experiment-results"' in running

    stopped = await harness.client.post(
        "/console/experiments/hero-test/stop", data={"csrf": csrf}, follow_redirects=False
    )
    assert stopped.status_code == 303
    assert harness.services.experiments.repository.get("hero-test")["status"] == "stopped"
    # stopping twice is the service's conflict, shown as an error page
    again = await harness.client.post(
        "/console/experiments/hero-test/stop", data={"csrf": csrf}, follow_redirects=False
    )
    assert again.status_code == 409 and "not_running" in again.text


async def test_a_viewer_reads_experiments_without_the_buttons(harness: Harness) -> None:
    await shop(harness)
    response = await harness.client.post("/v1/experiments", json=hero_test(), headers=harness.admin)
    assert response.status_code == 201, response.text
    async with as_role(harness, "viewer") as viewer:
        detail = await page(viewer, "/console/experiments/hero-test")
        assert "Hero banner" in detail and "/start" not in detail
        found = re.search(r'data-csrf="([^"]+)"', detail)
        assert found
        response = await viewer.post(
            "/console/experiments/hero-test/start",
            data={"csrf": found.group(1)},
            follow_redirects=False,
        )
        assert response.status_code == 403 and "experiments:write" in response.text
    assert harness.services.experiments.repository.get("hero-test")["status"] == "draft"


async def test_experiment_results_show_lift_interval_and_srm(tmp_path: Path) -> None:
    clock = FrozenClock(START)
    async with running_app(tmp_path / "data", clock=clock, run_lake_sink=True) as harness:
        await shop(harness)
        response = await harness.client.post(
            "/v1/experiments", json=hero_test(), headers=harness.admin
        )
        assert response.status_code == 201, response.text
        response = await harness.client.post(
            "/v1/experiments/hero-test/start", headers=harness.admin
        )
        assert response.status_code == 200, response.text
        variants = {}
        for number in range(40):
            answer = await decide(harness, userId=f"user-{number}")
            variants[f"user-{number}"] = answer["experiment"]["variant"]
        clock.advance(7200)
        buyers = [u for n, u in enumerate(variants) if n % 2 == 0]
        await send(
            harness,
            [
                {
                    "type": "track",
                    "userId": u,
                    "event": "Order Completed",
                    "properties": {"revenue": 30},
                    "timestamp": clock.now().isoformat(),
                }
                for u in buyers
            ],
        )
        clock.advance(3600)
        await settle(harness)
        api = await harness.client.get("/v1/experiments/hero-test/results", headers=harness.admin)
        assert api.status_code == 200, api.text
        results = api.json()
        await sign_in(harness.client, harness.admin_secret, next_path="/console/experiments")
        detail = await page(harness.client, "/console/experiments/hero-test")
        section = detail.split('id="experiment-results"')[1].split("</section>")[0]
        assert "Sample ratio check" in section
        assert ("passed" if results["srm"]["ok"] else "mismatch") in section
        (metric,) = results["metrics"]
        assert 'id="metric-purchase"' in section
        control = metric["control"]
        assert f'<td class="num">{control["users"]}</td>' in section
        (delivery,) = metric["variants"]
        assert f'<td class="num">{delivery["users"]}</td>' in section
        lift = delivery["relative"]["estimate"]
        assert f"{lift * 100:+.1f}%" in section
        low, high = delivery["relative"]["ci"]
        assert f"[{low * 100:+.1f}%, {high * 100:+.1f}%]" in section
        assert results["units"] == {
            v: sum(1 for x in variants.values() if x == v) for v in ("control", "delivery")
        }


async def test_models_page_renders_empty_and_with_a_registered_version(
    harness: Harness,
) -> None:
    await sign_in(harness.client, harness.admin_secret, next_path="/console/models")
    empty = await page(harness.client, "/console/models")
    assert "No churn model is registered yet" in empty
    assert "No clv model is registered yet" in empty
    assert "not checked yet" in empty
    target = await page(harness.client, "/console/models/churn")
    assert "Never promoted" in target and "No check yet" in target
    assert (await harness.client.get("/console/models/nope")).status_code == 404

    report = {
        "kind": "churn",
        "validation": {"method": "next_window", "validationUsers": 500},
        "model": {
            "users": 500,
            "roc_auc": 0.81,
            "brier": 0.17,
            "reliability": [
                {
                    "bin": 0,
                    "lower": 0.0,
                    "upper": 0.5,
                    "users": 300,
                    "mean_predicted": 0.2,
                    "observed_rate": 0.22,
                },
                {
                    "bin": 1,
                    "lower": 0.5,
                    "upper": 1.0,
                    "users": 200,
                    "mean_predicted": 0.7,
                    "observed_rate": 0.66,
                },
            ],
        },
        "baseline": {"users": 500, "roc_auc": 0.74, "brier": 0.2},
        "gate": {
            "metric": "roc_auc",
            "candidate": 0.81,
            "baseline": 0.74,
            "decision": "promoted",
            "reasons": [],
        },
    }
    registry = harness.services.models
    version = registry.register(
        churn_model(falling=True),
        as_of=START,
        definitions="test-definitions",
        lineage_id=None,
        report=report,
        status="promoted",
    )
    registry.promote(version.id, reason="gate")

    listing = await page(harness.client, "/console/models")
    churn = listing.split('id="model-churn"')[1].split("</section>")[0]
    assert f'href="/console/models/versions/{version.id}">v1</a>' in churn
    assert "serving" in churn and "roc_auc" in churn and "0.81" in churn and "0.74" in churn
    assert "No clv model is registered yet" in listing

    # a real monitoring check of the served version
    (check,) = harness.services.model_monitor.check()
    target = await page(harness.client, "/console/models/churn")
    assert ">gate<" in target and "Never promoted" not in target
    monitoring = target.split('id="model-monitoring"')[1].split("</section>")[0]
    assert check["checkedAt"] in monitoring
    assert ("no alert" if not check["alerts"] else check["alerts"][0]["kind"]) in monitoring
    listing = await page(harness.client, "/console/models")
    assert f"checked {check['checkedAt']}" in listing

    detail = await page(harness.client, f"/console/models/versions/{version.id}")
    assert "ROC AUC" in detail and "Brier score" in detail
    evaluation = detail.split('id="model-evaluation"')[1].split("</section>")[0]
    assert '<td class="num">0.81</td><td class="num">0.74</td>' in evaluation
    calibration = detail.split('id="model-calibration"')[1].split("</section>")[0]
    assert '<td class="num">0.22</td>' in calibration and '<td class="num">0.66</td>' in calibration
    assert version.sha256 in detail and "events_total" in detail
    # the registry stores no plotted report: nothing is inlined from a file
    assert "<svg" not in detail
    assert (await harness.client.get("/console/models/versions/999")).status_code == 404


async def test_a_role_without_the_scope_gets_403(harness: Harness) -> None:
    await create(harness, "pros", PRO)
    refusals = {
        "editor": [
            ("/console/models", "models:read"),
            ("/console/models/churn", "models:read"),
            ("/console/models/versions/1", "models:read"),
            ("/console/segments/pros/members", "profiles:read"),
        ],
        "service": [
            ("/console/segments", "segments:read"),
            ("/console/segments/pros", "segments:read"),
            ("/console/content", "content:read"),
            ("/console/content/items/x", "content:read"),
            ("/console/experiments", "experiments:read"),
            ("/console/experiments/x", "experiments:read"),
        ],
    }
    for role, paths in refusals.items():
        async with as_role(harness, role) as client:
            for path, scope in paths:
                refused = await page(client, path, 403)
                assert scope in refused, (role, path)
