"""The clustering routes through the real ASGI app: definitions and their 422s, runs queued
then carried out over profiles the collector, the worker and the lake writer built, the
cluster segments (``/v1/segments/KEY/CLUSTER``), rollback, names, archiving, roles, and the
scheduler woken by a queued run."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api import Harness, assert_error, running_app
from tests.lake.conftest import serving

PATHS = ["orders.all", "revenue.all", "events_total"]
SHOP = {"key": "shop", "features": PATHS, "k": 3, "schedule": "manual"}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


def spender(who: str, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": who,
            "event": "Order Completed",
            "properties": {"revenue": round(rng.uniform(150, 250), 2)},
        }
        for _ in range(rng.randint(8, 12))
    ]


def browser(who: str, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": who,
            "event": "Product Viewed",
            "properties": {"category": "shoes"},
        }
        for _ in range(rng.randint(15, 25))
    ]


def shopper(who: str, rng: random.Random) -> list[dict[str, Any]]:
    orders = [
        {
            "type": "track",
            "userId": who,
            "event": "Order Completed",
            "properties": {"revenue": round(rng.uniform(20, 40), 2)},
        }
        for _ in range(rng.randint(2, 3))
    ]
    views = [
        {"type": "track", "userId": who, "event": "Product Viewed", "properties": {"c": "hats"}}
        for _ in range(rng.randint(3, 5))
    ]
    return orders + views


KINDS = {"spender": spender, "browser": browser, "shopper": shopper}


def population(per_kind: int, *, seed: int = 0) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Users of three kinds (``spender-000``, ...) and their events."""
    rng = random.Random(seed)
    kinds: dict[str, str] = {}
    events: list[dict[str, Any]] = []
    for i in range(per_kind):
        for kind, make in KINDS.items():
            who = f"{kind}-{i:03d}"
            kinds[who] = kind
            events.extend(make(who, rng))
    return kinds, events


async def send(harness: Harness, events: list[dict[str, Any]]) -> None:
    """Through the collector, then applied by the worker and written to the lake."""
    for start in range(0, len(events), 200):
        batch = events[start : start + 200]
        response = await harness.client.post(
            "/v1/batch", json={"batch": batch}, headers=harness.auth
        )
        assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    sink = harness.services.lake_sink
    assert sink is not None
    while (await sink.process_once()).read:
        pass


async def create(harness: Harness, **body: Any) -> dict[str, Any]:
    response = await harness.client.post(
        "/v1/clusterings", json={**SHOP, **body}, headers=harness.admin
    )
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


async def get(harness: Harness, path: str, **params: Any) -> Any:
    response = await harness.client.get(path, params=params, headers=harness.admin)
    assert response.status_code == 200, (path, response.text)
    return response.json()


async def run_queued(harness: Harness, key: str = "shop") -> dict[str, Any]:
    """Queue a run, carry it out as the recluster job does, and return its document."""
    queued = await harness.client.post(f"/v1/clusterings/{key}/runs", headers=harness.admin)
    assert queued.status_code == 202, queued.text
    number = queued.json()["run"]
    harness.services.clustering_runner.run_pending()
    run: dict[str, Any] = await get(harness, f"/v1/clusterings/{key}/runs/{number}")
    return run


async def members(harness: Harness, segment: str, limit: int = 1000) -> list[str]:
    """Every current member of a segment, paged through ``/v1/segments/.../members``."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = await get(harness, f"/v1/segments/{segment}/members", **params)
        assert len(page["data"]) <= limit
        found.extend(m["profileId"] for m in page["data"])
        cursor = page["next"]
        if cursor is None:
            return found


async def memberships(harness: Harness, key: str = "shop") -> dict[str, str]:
    """Each member's cluster segment, over the current run's clusters."""
    document = await get(harness, f"/v1/clusterings/{key}")
    held: dict[str, str] = {}
    for cluster in document["current"]["clusters"]:
        for pid in await members(harness, cluster["segment"]):
            assert pid not in held, f"{pid} is in two clusters"
            held[pid] = cluster["segment"]
    return held


async def profile_ids(harness: Harness, users: list[str]) -> dict[str, str]:
    return {u: (await get(harness, f"/v1/profiles/{u}"))["profileId"] for u in users}


async def test_create_list_show_update_and_archive(harness: Harness) -> None:
    created = await create(harness, name="Shoppers", description="by spend", schedule="12h")
    assert created["key"] == "shop" and created["status"] == "active"
    assert (created["name"], created["description"]) == ("Shoppers", "by spend")
    assert created["features"] == PATHS and created["algorithm"] == "auto"
    assert (created["k"], created["kRange"], created["pca"]) == (3, [2, 10], None)
    assert (created["sampleSize"], created["seed"], created["schedule"]) == (5000, 0, "12h")
    assert created["currentRun"] is None and created["current"] is None
    # a schedule other than manual makes the first run due now
    assert created["nextRunAt"] is not None

    duplicate = await harness.client.post("/v1/clusterings", json=SHOP, headers=harness.admin)
    assert_error(duplicate, 409, "clustering_exists")
    await create(harness, key="alpha", schedule="manual", k="auto", algorithm="gmm")
    listing = await get(harness, "/v1/clusterings")
    assert [c["key"] for c in listing["data"]] == ["alpha", "shop"]
    assert listing["data"][0]["nextRunAt"] is None and listing["data"][0]["k"] == "auto"
    assert await get(harness, "/v1/clusterings/shop") == created

    changed = await harness.client.patch(
        "/v1/clusterings/shop",
        json={"name": "Buyers", "k": "auto", "kRange": [2, 4], "pca": 2, "seed": 7},
        headers=harness.admin,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["name"], body["description"]) == ("Buyers", "by spend")
    assert (body["k"], body["kRange"], body["pca"], body["seed"]) == ("auto", [2, 4], 2, 7)
    assert body["features"] == PATHS and body["createdAt"] == created["createdAt"]
    # null clears what may be null; absent keeps it
    cleared = await harness.client.patch(
        "/v1/clusterings/shop", json={"pca": None}, headers=harness.admin
    )
    assert cleared.json()["pca"] is None and cleared.json()["seed"] == 7
    nothing = await harness.client.patch("/v1/clusterings/shop", json={}, headers=harness.admin)
    assert_error(nothing, 400, "nothing_to_change")

    archived = await harness.client.delete("/v1/clusterings/shop", headers=harness.admin)
    assert archived.status_code == 200, archived.text
    assert archived.json()["status"] == "archived"
    gone = await harness.client.get("/v1/clusterings/shop", headers=harness.admin)
    assert_error(gone, 404, "clustering_not_found")
    listing = await get(harness, "/v1/clusterings")
    assert [c["key"] for c in listing["data"]] == ["alpha"]
    # the key can be taken again
    again = await create(harness)
    assert again["status"] == "active" and again["name"] == "shop"


@pytest.mark.parametrize(
    ("change", "code", "where"),
    [
        ({"features": ["orders.all", "nope"]}, "invalid_features", {"pointer": "/features/1"}),
        ({"features": ["orders"]}, "invalid_features", {"pointer": "/features/0"}),
        ({"features": []}, "invalid_features", {"pointer": "/features"}),
        ({"algorithm": "dbscan"}, "invalid_algorithm", {"field": "algorithm"}),
        ({"k": 1}, "invalid_k", {"field": "k"}),
        ({"k": "many"}, "invalid_k", {"field": "k"}),
        ({"kRange": [5, 2]}, "invalid_k", {"field": "kRange"}),
        ({"pca": 9}, "invalid_pca", {"field": "pca"}),
        ({"sampleSize": 50}, "invalid_sample_size", {"field": "sampleSize"}),
        ({"schedule": "sometimes"}, "invalid_schedule", {"field": "schedule"}),
        ({"schedule": "30m"}, "invalid_schedule", {"field": "schedule"}),
    ],
)
async def test_a_bad_definition_is_422_with_its_code_and_where(
    harness: Harness, change: dict[str, Any], code: str, where: dict[str, str]
) -> None:
    response = await harness.client.post(
        "/v1/clusterings", json={**SHOP, **change}, headers=harness.admin
    )
    error = assert_error(response, 422, code)
    assert error["details"] == where
    assert (await get(harness, "/v1/clusterings"))["data"] == []
    # a change is held to the same rules, and changes nothing
    before = await create(harness)
    patched = await harness.client.patch("/v1/clusterings/shop", json=change, headers=harness.admin)
    assert assert_error(patched, 422, code)["details"] == where
    assert await get(harness, "/v1/clusterings/shop") == before


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"key": "a/b", "features": PATHS}, "invalid_key"),
        ({"key": "shop", "features": PATHS, "name": "n" * 201}, "invalid_field"),
        ({"key": "shop", "features": PATHS, "colour": "red"}, "invalid_parameter"),
        ({"key": "shop", "features": "orders.all"}, "invalid_parameter"),
        ({"key": "shop"}, "invalid_parameter"),
        ({"key": "shop", "features": PATHS, "seed": -1}, "invalid_parameter"),
        ({"key": "shop", "features": PATHS, "seed": 2**32}, "invalid_parameter"),
        ({"key": "shop", "features": PATHS, "k": True}, "invalid_parameter"),
    ],
)
async def test_a_bad_body_is_400(harness: Harness, body: dict[str, Any], code: str) -> None:
    response = await harness.client.post("/v1/clusterings", json=body, headers=harness.admin)
    assert_error(response, 400, code)
    assert (await get(harness, "/v1/clusterings"))["data"] == []


async def test_a_run_is_queued_then_makes_every_cluster_a_segment(harness: Harness) -> None:
    kinds, events = population(10)
    await send(harness, events)
    await create(harness)
    queued = await harness.client.post("/v1/clusterings/shop/runs", headers=harness.admin)
    assert queued.status_code == 202, queued.text
    pending = queued.json()
    assert (pending["run"], pending["status"], pending["trigger"]) == (1, "pending", "requested")
    assert pending["spec"]["features"] == PATHS and pending["clusters"] == []
    # no scheduler runs in this process: the run waits for the recluster job
    assert (await get(harness, "/v1/clusterings/shop/runs/1"))["status"] == "pending"

    outcomes = harness.services.clustering_runner.run_pending()
    assert [o.run.number for o in outcomes] == [1]
    run = await get(harness, "/v1/clusterings/shop/runs/1")
    assert run["status"] == "succeeded", run["error"]
    assert (run["k"], run["rows"], run["error"]) == (3, len(kinds), None)
    assert run["silhouette"] > 0.5 and run["daviesBouldin"] is not None
    assert run["startedAt"] is not None and run["finishedAt"] is not None
    assert run["lineage"]["source"] == "lake" and run["lineage"]["profiles"] == len(kinds)
    assert sorted(run["changes"]["appeared"]) == sorted(c["key"] for c in run["clusters"])
    for cluster in run["clusters"]:
        assert set(cluster["centroid"]) == set(PATHS)
        assert cluster["distinguishing"][0]["feature"] in PATHS
    assert sum(c["size"] for c in run["clusters"]) == len(kinds)
    runs = await get(harness, "/v1/clusterings/shop/runs")
    assert runs["clustering"] == "shop" and [r["run"] for r in runs["data"]] == [1]

    document = await get(harness, "/v1/clusterings/shop")
    current = document["current"]
    assert document["currentRun"] == 1 and current["run"] == 1 and current["k"] == 3
    assert current["silhouette"] == run["silhouette"]
    assert [(c["key"], c["name"], c["size"]) for c in current["clusters"]] == [
        (c["key"], c["name"], c["size"]) for c in run["clusters"]
    ]
    assert (await get(harness, "/v1/clusterings"))["data"][0]["current"] == current

    # every user is in the cluster segment of its kind, and its profile says so
    ids = await profile_ids(harness, list(kinds))
    held = await memberships(harness)
    assert set(held) == set(ids.values())
    by_kind = {kind: {held[ids[u]] for u, k in kinds.items() if k == kind} for kind in KINDS}
    assert all(len(segments) == 1 for segments in by_kind.values()), by_kind
    (spenders,) = by_kind["spender"]
    profile = await get(harness, "/v1/profiles/spender-003")
    assert [s["key"] for s in profile["segments"]] == [spenders]

    # the cluster segment answers the segment routes with its two-part key
    segment = await get(harness, f"/v1/segments/{spenders}")
    assert (segment["key"], segment["kind"], segment["status"]) == (spenders, "cluster", "active")
    cluster = spenders.split("/", 1)[1]
    assert segment["name"] == next(c["name"] for c in run["clusters"] if c["key"] == cluster)
    stats = await get(harness, f"/v1/segments/{spenders}/stats", days=3)
    assert (stats["key"], stats["size"], stats["entries"]) == (spenders, 10, 10)
    assert len(stats["series"]) == 3
    versions = await get(harness, f"/v1/segments/{spenders}/versions")
    assert versions["key"] == spenders and versions["data"][0]["status"] == "active"
    # members page through with a cursor, in profile-id order
    paged = await members(harness, spenders, limit=3)
    assert paged == sorted(ids[u] for u, k in kinds.items() if k == "spender")
    first = await get(harness, f"/v1/segments/{spenders}/members", limit=3)
    assert len(first["data"]) == 3 and first["next"] == first["data"][-1]["profileId"]
    assert first["data"][0]["segmentVersion"] == segment["version"]
    listed = await get(harness, "/v1/segments")
    assert {s["key"] for s in listed["data"]} == set(held.values())

    missing = await harness.client.get("/v1/segments/shop/nope/members", headers=harness.admin)
    assert_error(missing, 404, "segment_not_found")
    absent = await harness.client.get("/v1/clusterings/shop/runs/9", headers=harness.admin)
    assert_error(absent, 404, "run_not_found")


async def test_a_run_without_enough_profiles_fails_and_says_why(harness: Harness) -> None:
    _kinds, events = population(1)
    await send(harness, events[:3])
    await create(harness)
    run = await run_queued(harness)
    assert run["status"] == "failed" and "at least 3" in run["error"]
    assert run["k"] is None and run["clusters"] == []
    assert (await get(harness, "/v1/clusterings/shop"))["current"] is None
    refused = await harness.client.post(
        "/v1/clusterings/shop/runs/1/restore", headers=harness.admin
    )
    assert_error(refused, 409, "run_not_restorable")


async def test_restore_brings_a_runs_memberships_back(harness: Harness) -> None:
    kinds, events = population(8, seed=1)
    await send(harness, events)
    await create(harness)
    assert (await run_queued(harness))["status"] == "succeeded"
    first = await memberships(harness)
    ids = await profile_ids(harness, list(kinds))
    # the browsers start buying a lot; the second run (and the worker before it) moves them
    rng = random.Random(2)
    await send(harness, [e for i in range(8) for e in spender(f"browser-{i:03d}", rng)])
    second = await run_queued(harness)
    assert second["status"] == "succeeded"
    moved = await memberships(harness)
    assert moved != first and set(moved) == set(first) == set(ids.values())

    # a run that has not succeeded, or does not exist, cannot be restored
    await harness.client.post("/v1/clusterings/shop/runs", headers=harness.admin)
    waiting = await harness.client.post(
        "/v1/clusterings/shop/runs/3/restore", headers=harness.admin
    )
    assert_error(waiting, 409, "run_not_restorable")
    absent = await harness.client.post(
        "/v1/clusterings/shop/runs/99/restore", headers=harness.admin
    )
    assert_error(absent, 404, "run_not_found")
    harness.services.clustering_runner.run_pending()

    restored = await harness.client.post(
        "/v1/clusterings/shop/runs/1/restore", headers=harness.admin
    )
    assert restored.status_code == 202, restored.text
    queued = restored.json()
    assert (queued["run"], queued["status"]) == (4, "pending")
    assert (queued["trigger"], queued["restoredFrom"]) == ("rollback", 1)
    harness.services.clustering_runner.run_pending()
    back = await get(harness, "/v1/clusterings/shop/runs/4")
    assert back["status"] == "succeeded" and back["restoredFrom"] == 1
    original = await get(harness, "/v1/clusterings/shop/runs/1")
    assert back["clusters"] == original["clusters"] and back["k"] == original["k"]
    assert await memberships(harness) == first
    assert (await get(harness, "/v1/clusterings/shop"))["currentRun"] == 4
    runs = await get(harness, "/v1/clusterings/shop/runs")
    assert [r["run"] for r in runs["data"]] == [4, 3, 2, 1] and runs["next"] is None
    # a page at a time
    first_page = await get(harness, "/v1/clusterings/shop/runs", limit=3)
    assert [r["run"] for r in first_page["data"]] == [4, 3, 2] and first_page["next"] == 2
    rest = await get(harness, "/v1/clusterings/shop/runs", limit=3, before=first_page["next"])
    assert [r["run"] for r in rest["data"]] == [1] and rest["next"] is None


async def test_a_cluster_keeps_the_name_a_person_gives_it(harness: Harness) -> None:
    _kinds, events = population(6, seed=3)
    await send(harness, events)
    await create(harness)
    await run_queued(harness)
    ids = await profile_ids(harness, ["spender-000"])
    segment = (await memberships(harness))[ids["spender-000"]]
    cluster = segment.split("/", 1)[1]
    automatic = (await get(harness, f"/v1/segments/{segment}"))["name"]

    named = await harness.client.put(
        f"/v1/clusterings/shop/clusters/{cluster}/name",
        json={"name": "Whales"},
        headers=harness.admin,
    )
    assert named.status_code == 200, named.text
    assert named.json()["names"] == {cluster: "Whales"}
    summary = {c["key"]: c["name"] for c in named.json()["current"]["clusters"]}
    assert summary[cluster] == "Whales"
    assert (await get(harness, f"/v1/segments/{segment}"))["name"] == "Whales"
    # a rerun keeps it
    await run_queued(harness)
    assert (await get(harness, f"/v1/segments/{segment}"))["name"] == "Whales"

    cleared = await harness.client.put(
        f"/v1/clusterings/shop/clusters/{cluster}/name", json={"name": None}, headers=harness.admin
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["names"] == {}
    assert (await get(harness, f"/v1/segments/{segment}"))["name"] == automatic

    unknown = await harness.client.put(
        "/v1/clusterings/shop/clusters/nope/name", json={"name": "x"}, headers=harness.admin
    )
    assert_error(unknown, 404, "cluster_not_found")
    too_long = await harness.client.put(
        f"/v1/clusterings/shop/clusters/{cluster}/name",
        json={"name": "n" * 201},
        headers=harness.admin,
    )
    assert_error(too_long, 400, "invalid_field")
    no_name = await harness.client.put(
        f"/v1/clusterings/shop/clusters/{cluster}/name", json={}, headers=harness.admin
    )
    assert_error(no_name, 400, "invalid_parameter")


async def test_archiving_is_refused_while_a_rule_reads_a_cluster(harness: Harness) -> None:
    _kinds, events = population(6, seed=4)
    await send(harness, events)
    await create(harness)
    await run_queued(harness)
    held = await memberships(harness)
    segment = sorted(set(held.values()))[0]
    rule = await harness.client.post(
        "/v1/segments",
        json={"key": "fans", "condition": {"segment": segment}},
        headers=harness.admin,
    )
    assert rule.status_code == 201, rule.text

    refused = await harness.client.delete("/v1/clusterings/shop", headers=harness.admin)
    error = assert_error(refused, 409, "segment_in_use")
    assert error["details"] == {"usedBy": ["fans"]}
    assert (await get(harness, "/v1/clusterings/shop"))["status"] == "active"

    await harness.client.delete("/v1/segments/fans", headers=harness.admin)
    archived = await harness.client.delete("/v1/clusterings/shop", headers=harness.admin)
    assert archived.status_code == 200, archived.text
    assert archived.json()["status"] == "archived"
    for key in set(held.values()):
        assert (await get(harness, f"/v1/segments/{key}"))["status"] == "archived"
        assert await members(harness, key) == []
    profile = await get(harness, "/v1/profiles/spender-000")
    assert profile["segments"] == []
    # its runs stay readable, as history; nothing else answers for it
    history = await get(harness, "/v1/clusterings/shop/runs")
    assert [run["run"] for run in history["data"]] == [1] and history["next"] is None
    for method, path in [
        ("POST", "/v1/clusterings/shop/runs"),
        ("PATCH", "/v1/clusterings/shop"),
        ("DELETE", "/v1/clusterings/shop"),
    ]:
        body = {"name": "x"} if method == "PATCH" else None
        response = await harness.client.request(method, path, json=body, headers=harness.admin)
        assert_error(response, 404, "clustering_not_found")


async def test_literal_tails_route_before_a_clusters_two_part_key(harness: Harness) -> None:
    _kinds, events = population(4, seed=5)
    await send(harness, events)
    # a rule segment and a clustering of the same key: ``vip/members`` is the rule's members
    response = await harness.client.post(
        "/v1/segments",
        json={"key": "vip", "condition": {"event": "Order Completed", "within": "7d"}},
        headers=harness.admin,
    )
    assert response.status_code == 201, response.text
    await create(harness, key="vip")
    await run_queued(harness, "vip")
    clusters = (await get(harness, "/v1/clusterings/vip"))["current"]["clusters"]
    assert clusters and not {c["key"] for c in clusters} & {"members", "stats", "versions"}

    rule_members = await get(harness, "/v1/segments/vip/members")
    assert set(rule_members) == {"data", "next"}
    stats = await get(harness, "/v1/segments/vip/stats")
    assert stats["key"] == "vip"
    versions = await get(harness, "/v1/segments/vip/versions")
    assert versions["key"] == "vip"
    for cluster in clusters:
        shown = await get(harness, f"/v1/segments/{cluster['segment']}")
        assert shown["key"] == cluster["segment"] and shown["kind"] == "cluster"
        inside = await get(harness, f"/v1/segments/{cluster['segment']}/members")
        assert len(inside["data"]) == cluster["size"]


async def test_keys_and_roles(harness: Harness) -> None:
    _kinds, events = population(2, seed=6)
    await send(harness, events)
    await create(harness)
    await run_queued(harness)
    cluster = (await get(harness, "/v1/clusterings/shop"))["current"]["clusters"][0]["key"]
    _, secret = harness.services.api_keys.create("reader", "read")
    reader = {"Authorization": f"Bearer {secret}"}
    reads = [
        "/v1/clusterings",
        "/v1/clusterings/shop",
        "/v1/clusterings/shop/runs",
        "/v1/clusterings/shop/runs/1",
        f"/v1/segments/shop/{cluster}",
        f"/v1/segments/shop/{cluster}/members",
        f"/v1/segments/shop/{cluster}/stats",
        f"/v1/segments/shop/{cluster}/versions",
    ]
    for path in reads:
        response = await harness.client.get(path, headers=reader)
        assert response.status_code == 200, (path, response.text)
        assert_error(await harness.client.get(path), 401, "missing_api_key")
        bad = {"Authorization": "Bearer pk_nope"}
        assert_error(await harness.client.get(path, headers=bad), 401, "invalid_api_key")
    writes = [
        ("POST", "/v1/clusterings", {**SHOP, "key": "other"}),
        ("PATCH", "/v1/clusterings/shop", {"name": "renamed"}),
        ("DELETE", "/v1/clusterings/shop", None),
        ("POST", "/v1/clusterings/shop/runs", None),
        ("POST", "/v1/clusterings/shop/runs/1/restore", None),
        ("PUT", f"/v1/clusterings/shop/clusters/{cluster}/name", {"name": "x"}),
    ]
    for method, path, body in writes:
        response = await harness.client.request(method, path, json=body, headers=reader)
        assert_error(response, 403, "forbidden")
        unauthenticated = await harness.client.request(method, path, json=body)
        assert_error(unauthenticated, 401, "missing_api_key")
    # nothing changed
    document = await get(harness, "/v1/clusterings/shop")
    assert document["name"] == "shop" and document["names"] == {}
    assert [r["run"] for r in (await get(harness, "/v1/clusterings/shop/runs"))["data"]] == [1]
    listing = await get(harness, "/v1/clusterings")
    assert [c["key"] for c in listing["data"]] == ["shop"]


async def test_the_routes_are_in_the_openapi_document(harness: Harness) -> None:
    paths = (await harness.client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/clusterings"]) == {"get", "post"}
    assert set(paths["/v1/clusterings/{key}"]) == {"get", "patch", "delete"}
    assert set(paths["/v1/clusterings/{key}/runs"]) == {"get", "post"}
    assert set(paths["/v1/clusterings/{key}/runs/{number}"]) == {"get"}
    assert set(paths["/v1/clusterings/{key}/runs/{number}/restore"]) == {"post"}
    assert set(paths["/v1/clusterings/{key}/clusters/{cluster}/name"]) == {"put"}
    for tail in ("", "/members", "/stats", "/versions"):
        assert "get" in paths[f"/v1/segments/{{clustering}}/{{cluster}}{tail}"]
    create_op = paths["/v1/clusterings"]["post"]
    assert create_op["security"] == [{"apiKey": ["segments:write"]}]
    assert {"201", "400", "401", "403", "409", "422", "503"} <= set(create_op["responses"])
    assert {"202", "404"} <= set(paths["/v1/clusterings/{key}/runs"]["post"]["responses"])
    restore = paths["/v1/clusterings/{key}/runs/{number}/restore"]["post"]["responses"]
    assert {"202", "404", "409"} <= set(restore)
    assert {"200", "404", "409"} <= set(paths["/v1/clusterings/{key}"]["delete"]["responses"])
    assert {"200", "404", "422"} <= set(paths["/v1/clusterings/{key}"]["patch"]["responses"])
    number = next(
        p
        for p in paths["/v1/clusterings/{key}/runs/{number}"]["get"]["parameters"]
        if p["name"] == "number"
    )
    assert number["schema"]["minimum"] == 1
    for path, operations in paths.items():
        if path.startswith("/v1/clusterings"):
            for operation in operations.values():
                assert operation["tags"] == ["clusterings"]
                assert {"401", "403", "503"} <= set(operation["responses"])


async def _until(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_queued_run_wakes_the_recluster_job_at_once(tmp_path: Path) -> None:
    # the job's own turn is an hour away: only the trigger can start the run in time
    async with serving(tmp_path / "data", segment_recluster_interval_s=3600.0) as served:
        scheduler = served.services.scheduler
        assert scheduler is not None and scheduler.running
        kinds, events = population(5, seed=7)
        response = await served.send("/v1/batch", {"batch": events})
        assert response.status_code == 200, response.text
        await served.settled()
        created = await served.client.post("/v1/clusterings", json=SHOP)
        assert created.status_code == 201, created.text
        queued = await served.client.post("/v1/clusterings/shop/runs")
        assert queued.status_code == 202, queued.text

        job = scheduler.statuses["segment-recluster"]

        async def job_ran() -> bool:
            return job.runs >= 1

        await _until(job_ran, "the recluster job to carry out the queued run")
        assert (job.runs, job.failures) == (1, 0)
        assert job.last_result is not None
        assert [r["run"] for r in job.last_result["runs"]] == [1]
        run = (await served.client.get("/v1/clusterings/shop/runs/1")).json()
        assert run["status"] == "succeeded", run["error"]
        assert run["rows"] == len(kinds)
        members = await served.client.get("/v1/clusterings/shop")
        assert sum(c["size"] for c in members.json()["current"]["clusters"]) == len(kinds)
