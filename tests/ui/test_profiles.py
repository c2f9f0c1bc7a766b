"""The profile explorer through the real app over HTTP: events go in through the collector,
the stream worker applies them, and the console shows the person found by any of their ids,
with PII as stored (hashed), the timeline, the identity graph with its merge, a diff between
two versions and the activity chart; an unknown id is a friendly 404, a role without
``profiles:read`` gets 403, every read is audited, and an erasure needs the id typed again."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.privacy.suppression import id_hash
from personify.ui.profiles import ACTIVITY_DAYS, daily_activity, identity_graph, version_diff
from tests.api import Harness, running_app
from tests.ui import sign_in

RAW_EMAIL = "Ada.Lovelace@Example.com"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _send(harness: Harness, *events: dict[str, Any]) -> None:
    """Send a batch through the collector and let the stream worker apply it."""
    response = await harness.client.post(
        "/v1/batch", json={"batch": list(events)}, headers=harness.auth
    )
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)


async def _ada(harness: Harness) -> None:
    """An anonymous visitor who signs up as ``ada``, and a second device of hers (``anon-2``)
    that an alias merges into her profile."""
    now = harness.services.clock.now()
    await _send(
        harness,
        {
            "type": "page",
            "anonymousId": "anon-1",
            "name": "Home",
            "timestamp": _iso(now - timedelta(days=3)),
        },
        {
            "type": "track",
            "anonymousId": "anon-1",
            "event": "Viewed Product",
            "properties": {"sku": "sku-1"},
            "timestamp": _iso(now - timedelta(days=3, minutes=-1)),
        },
    )
    await _send(
        harness,
        {
            "type": "identify",
            "userId": "ada",
            "anonymousId": "anon-1",
            "traits": {"email": RAW_EMAIL, "plan": "pro"},
            "timestamp": _iso(now - timedelta(days=1)),
        },
    )
    await _send(
        harness,
        {"type": "track", "anonymousId": "anon-2", "event": "Opened App"},
    )
    await _send(harness, {"type": "alias", "previousId": "anon-2", "userId": "ada"})


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


async def test_the_profile_page_shows_everything_by_any_id(harness: Harness) -> None:
    await _ada(harness)
    client = harness.client
    await sign_in(client, harness.admin_secret)
    stored = (await client.get("/v1/profiles/ada", headers=harness.admin)).json()
    hashed_email = stored["traits"]["email"]
    assert hashed_email.startswith("hmac-sha256:")

    # the search finds her by an anonymousId of the merged device too
    found = await client.get("/console/profiles", params={"q": "anon-2"}, follow_redirects=False)
    assert found.status_code == 303
    assert found.headers["location"] == "/console/profiles/anon-2"
    response = await client.get(found.headers["location"])
    assert response.status_code == 200, response.text[:800]
    page = html.unescape(response.text)
    assert "Profile <code>ada</code>" in page
    # PII only as stored
    assert hashed_email in page
    assert RAW_EMAIL not in page and RAW_EMAIL.lower() not in page
    assert "pro" in page
    # the timeline, newest first: the alias, then anon-2's app open, ... the first page view
    timeline = page[page.index('id="timeline"') : page.index('id="history"')]
    names = re.findall(r"<strong>([^<]*)</strong>", timeline)
    assert names[:2] == ["anon-2 → ada", "Opened App"], names
    assert names[-2:] == ["Viewed Product", "Home"], names
    assert "Older events" not in timeline
    # an older page, from the cursor the events API gives after the newest two
    first = await client.get("/v1/profiles/ada/events?limit=2", headers=harness.admin)
    older = html.unescape(
        (await client.get("/console/profiles/ada", params={"cursor": first.json()["next"]})).text
    )
    older_timeline = older[older.index('id="timeline"') : older.index('id="history"')]
    assert re.findall(r"<strong>([^<]*)</strong>", older_timeline) == names[2:]
    assert "Back to the newest" in older_timeline
    # the identity graph: every id is drawn around the profile, the merge as a dashed edge
    graph = page[page.index("<svg") : page.index("</svg>")]
    for identity in ("ada", "anon-1", "anon-2"):
        assert f"{identity}</title>" in graph, identity
    assert 'class="idg-edge idg-edge-merge"' in graph
    assert "Identity graph of ada" in graph
    # consent, sessions, features, segments, predictions, experiments
    for section in ("consent", "sessions", "features", "segments", "predictions", "experiments"):
        assert f'id="{section}"' in page, section
    assert "allowed" in page
    # the activity chart: 30 days, with the days of her events counted
    chart = re.search(r'<script type="application/json" id="activity-data">(.*?)</script>', page)
    assert chart and 'data-chart="activity-data"' in page
    data = json.loads(chart.group(1))
    assert len(data["x"]) == ACTIVITY_DAYS
    assert sum(data["series"][0]["values"]) == 5
    assert data["series"][0]["values"][-4] == 2  # the two events three days ago
    # a diff is shown by default (the newest version against the one before it)
    assert 'id="version-diff"' in page
    # a page of the console: not cached, no inline script or style (the policy forbids them)
    assert response.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert " style=" not in response.text and "<script>" not in response.text


async def test_the_diff_between_two_chosen_versions(harness: Harness) -> None:
    await _ada(harness)
    # version 3: her plan changes
    await _send(harness, {"type": "identify", "userId": "ada", "traits": {"plan": "team"}})
    client = harness.client
    await sign_in(client, harness.admin_secret)
    history = (await client.get("/v1/profiles/ada/history", headers=harness.admin)).json()
    assert [v["version"] for v in history["data"]] == [3, 2, 1]
    response = await client.get("/console/profiles/ada", params={"diff_from": 1, "diff_to": 3})
    assert response.status_code == 200, response.text[:800]
    page = html.unescape(response.text)
    assert "from version 1 to version 3" in page
    rows = _diff_rows(page)
    assert ("chg", "changed", "traits.plan") in rows, rows
    # the merge of anon-2 (version 2) brought a previous id
    assert ("add", "added", "previous_ids") in rows, rows
    assert '"team"' in page and '"pro"' in page
    # the other way round, what was added is removed
    back = html.unescape(
        (await client.get("/console/profiles/ada", params={"diff_from": 3, "diff_to": 1})).text
    )
    assert ("del", "removed", "previous_ids") in _diff_rows(back)
    # from nothing: the first version adds everything it holds
    first = html.unescape(
        (await client.get("/console/profiles/ada", params={"diff_from": 0, "diff_to": 1})).text
    )
    assert ("add", "added", "traits") in _diff_rows(first)
    # by default the newest version against the one before it
    default = html.unescape((await client.get("/console/profiles/ada")).text)
    assert "from version 2 to version 3" in default
    # the form offers every version in both selects, and "nothing" as a start
    assert page.count('<option value="3"') == 2
    assert page.count('<option value="0"') == 1
    # a version that was never kept is refused by the parameter's bounds, or shows no diff
    assert (await client.get("/console/profiles/ada", params={"diff_to": -1})).status_code == 400


def _diff_rows(page: str) -> list[tuple[str, str, str]]:
    start = page.index('id="version-diff"')
    table = page[start : page.index("</table>", start)]
    return re.findall(
        r'<tr class="diff-(add|del|chg)"><td>(\w+)</td><td class="mono">([^<]+)</td>', table
    )


async def test_an_unknown_id_is_a_friendly_404(harness: Harness) -> None:
    await sign_in(harness.client, harness.admin_secret)
    for path in ("/console/profiles/nobody", "/console/profiles?q=nobody"):
        response = await harness.client.get(path)
        assert response.status_code == 404, path
        assert "No such profile" in response.text
        assert "<code>nobody</code>" in response.text
        assert 'name="q"' in response.text  # the search box, to try another id
    empty = await harness.client.get("/console/profiles")
    assert empty.status_code == 200
    assert '<label for="profile-q">' in empty.text


async def test_an_id_with_a_slash_is_found_by_its_profile_id(harness: Harness) -> None:
    await _send(
        harness,
        {"type": "identify", "userId": "grace", "anonymousId": "web/1"},
        {"type": "track", "userId": "team/ops", "event": "Opened App"},
    )
    await sign_in(harness.client, harness.admin_secret)
    found = await harness.client.get(
        "/console/profiles", params={"q": "web/1"}, follow_redirects=False
    )
    assert found.status_code == 303
    assert found.headers["location"] == "/console/profiles/grace"
    # a profile whose every id holds a slash cannot have a page address: the page says so
    response = await harness.client.get("/console/profiles", params={"q": "team/ops"})
    assert response.status_code == 200
    assert "Profile found" in response.text and "GET /v1/profiles/{id}" in response.text


async def test_an_editor_gets_403_and_an_analyst_reads_but_cannot_erase(
    harness: Harness,
) -> None:
    await _ada(harness)
    _, editor = harness.services.api_keys.create("console-editor", "editor")
    _, analyst = harness.services.api_keys.create("console-analyst", "analyst")
    transport, base = harness.client._transport, str(harness.client.base_url)
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        await sign_in(client, editor)
        for path in ("/console/profiles", "/console/profiles/ada", "/console/profiles?q=ada"):
            response = await client.get(path, follow_redirects=False)
            assert response.status_code == 403, path
            assert "profiles:read" in response.text
            assert "hmac-sha256" not in response.text
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        token = await sign_in(client, analyst)
        page = await client.get("/console/profiles/ada")
        assert page.status_code == 200
        assert "Erase this person" not in page.text
        refused = await client.post(
            "/console/profiles/ada/erase", data={"csrf": token, "confirm": "ada"}
        )
        assert refused.status_code == 403
        assert "profiles:write" in refused.text
    assert harness.services.privacy.requests.for_identity("ada") == []


async def test_profile_reads_are_audited_with_the_id_hashed(harness: Harness) -> None:
    await _ada(harness)
    await sign_in(harness.client, harness.admin_secret)
    assert (await harness.client.get("/console/profiles/anon-1")).status_code == 200
    records = [r.to_document() for r in harness.services.audit.query(limit=1000)]
    reads = [r for r in records if r["action"] == "GET /console/profiles/{id}"]
    assert len(reads) == 1, records
    key = harness.services.api_keys.resolve(harness.admin_secret)
    assert key is not None
    assert reads[0]["actor"] == key.id
    assert reads[0]["resource"] == "/console/profiles/" + id_hash(harness.services.hasher, "anon-1")
    assert "anon-1" not in json.dumps(records)


async def test_erasing_needs_the_csrf_token_and_the_id_typed_again(harness: Harness) -> None:
    await _ada(harness)
    client = harness.client
    await sign_in(client, harness.admin_secret)
    page = await client.get("/console/profiles/ada")
    assert 'href="/console/profiles/ada/erase"' in page.text
    form = await client.get("/console/profiles/ada/erase")
    assert form.status_code == 200
    token = _csrf(form.text)
    # without the session's token: refused, nothing requested
    forged = await client.post("/console/profiles/ada/erase", data={"confirm": "ada"})
    assert forged.status_code == 403
    assert "csrf_failed" in forged.text
    # a wrong id typed: the form again, nothing requested
    wrong = await client.post("/console/profiles/ada/erase", data={"csrf": token, "confirm": "ad"})
    assert wrong.status_code == 400
    assert "does not match" in wrong.text
    assert harness.services.privacy.requests.for_identity("ada") == []
    done = await client.post(
        "/console/profiles/ada/erase",
        data={"csrf": token, "confirm": "ada"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text[:500]
    location = done.headers["location"]
    assert location.startswith("/console/privacy/requests/")
    (request,) = harness.services.privacy.requests.for_identity("ada")
    assert location.endswith(request.id)
    status = await client.get(location)
    assert status.status_code == 200
    assert 'id="erasure-status"' in status.text and request.status in status.text
    # the erasure runs as the background job does; the profile is gone after it
    await harness.services.privacy.run_async()
    finished = await client.get(location)
    assert ">done<" in finished.text, finished.text[:2000]
    assert (await client.get("/console/profiles/ada")).status_code == 404
    missing = await client.get("/console/privacy/requests/nope")
    assert missing.status_code == 404


def test_the_identity_graph_hangs_merged_ids_off_their_profile() -> None:
    graph = identity_graph(
        "ada",
        {"userIds": ["ada"], "anonymousIds": ["anon-1", "anon-2", "anon-3"], "previousIds": []},
        [{"from": "anon-2", "ids": ["anon-2", "anon-3"]}],
    )
    by_title = {node.title: node for node in graph.nodes}
    # the profile's own id is the centre; every other id sits around it
    assert set(by_title) == {"anon-1", "anon-2", "anon-3"}
    assert graph.centre.title == "ada"
    kinds = {(e.kind, (e.x1, e.y1), (e.x2, e.y2)) for e in graph.edges}
    centre = (graph.centre.x, graph.centre.y)
    merged = (by_title["anon-2"].x, by_title["anon-2"].y)
    assert ("merge", centre, merged) in kinds
    assert ("id", merged, (by_title["anon-3"].x, by_title["anon-3"].y)) in kinds
    assert ("id", centre, (by_title["anon-1"].x, by_title["anon-1"].y)) in kinds
    # every node inside the drawing
    assert all(0 < n.x < graph.width and 0 < n.y < graph.height for n in graph.nodes)
    many = identity_graph("p", {"anonymousIds": [f"a{i}" for i in range(40)]}, [])
    assert len(many.nodes) == 24 and many.hidden == 16


def test_version_diff_names_added_removed_and_changed_paths() -> None:
    rows = version_diff(
        {"traits": {"plan": [1, "m", "free"], "gone": [1, "m", 1]}, "events": 1},
        {"traits": {"plan": [2, "n", "pro"], "email": [2, "n", "h"]}, "events": 2},
    )
    assert [(r["change"], r["path"]) for r in rows] == [
        ("changed", "events"),
        ("added", "traits.email"),
        ("removed", "traits.gone"),
        ("changed", "traits.plan"),
    ]
    assert rows[3]["before"] == [1, "m", "free"] and rows[3]["after"] == [2, "n", "pro"]


def test_daily_activity_counts_utc_days() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    data = daily_activity([now, now - timedelta(hours=13), now - timedelta(days=40)], now, days=30)
    assert data["x"][-1] == int(datetime(2026, 3, 10, tzinfo=UTC).timestamp())
    assert data["series"][0]["values"][-2:] == [1, 1]
    assert sum(data["series"][0]["values"]) == 2
