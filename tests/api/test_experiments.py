"""``/v1/experiments`` through the real ASGI app: definitions checked with pointers, phases
that never reshuffle users silently, namespaces that never share users, the experiment
choosing the variant inside ``/v1/decide`` with the exposure carrying it, sticky
assignments (across a new phase and across an identify), a report from the lake with the
right counts, multivariate cells, bandits with their propensities, and the analysis of
summary statistics from anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from personify.clock import FrozenClock
from personify.experiments.assignment import Allocation, assign_variant
from tests.api import Harness, assert_error, running_app

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PURCHASE = {"key": "purchase", "type": "conversion", "event": "Order Completed", "windowDays": 7}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def harness(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", clock=clock, run_lake_sink=True) as h:
        yield h


async def call(harness: Harness, method: str, path: str, body: Any = None, **params: Any) -> Any:
    response = await harness.client.request(
        method, path, json=body, headers=harness.admin, params=params
    )
    assert response.status_code in (200, 201, 204), response.text
    return response.json() if response.content else None


async def shop(harness: Harness) -> None:
    """A hero placement with its default and two banners to test."""
    banner = {"type": "banner", "placements": []}
    await call(
        harness,
        "POST",
        "/v1/content",
        {**banner, "id": "generic", "fields": {"title": "Welcome", "colour": "blue"}},
        publish="true",
    )
    await call(harness, "POST", "/v1/placements", {"id": "home-hero", "defaultItem": "generic"})
    for item_id, title, placements in (
        ("hero-a", "Spring sale", ["home-hero"]),
        ("hero-b", "Free delivery", []),
    ):
        await call(
            harness,
            "POST",
            "/v1/content",
            {
                **banner,
                "id": item_id,
                "fields": {"title": title, "colour": "blue"},
                "placements": placements,
            },
            publish="true",
        )


def hero_test(**extra: Any) -> dict[str, Any]:
    return {
        "key": "hero-test",
        "name": "Hero banner",
        "hypothesis": "Free delivery sells more than a sale",
        "placements": ["home-hero"],
        "variants": [
            {"key": "control", "weight": 1},
            {"key": "delivery", "weight": 1, "placements": {"home-hero": {"items": ["hero-b"]}}},
        ],
        "metrics": {"primary": [PURCHASE]},
        **extra,
    }


async def decide(harness: Harness, **ids: str) -> dict[str, Any]:
    body = {"placements": [{"id": "home-hero"}], **ids}
    response = await harness.client.post("/v1/decide", json=body, headers=harness.admin)
    assert response.status_code == 200, response.text
    placement: dict[str, Any] = response.json()["placements"]["home-hero"]
    return placement


async def send(harness: Harness, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 400):
        response = await harness.client.post(
            "/v1/batch", json={"batch": events[start : start + 400]}, headers=harness.auth
        )
        assert response.status_code == 200, response.text


async def settle(harness: Harness) -> None:
    """The worker and the lake sink drained: what was logged is applied and in the lake."""
    await harness.services.worker.run(until_idle=True)
    sink = harness.services.lake_sink
    assert sink is not None
    while (await sink.process_once()).read:
        pass


async def test_definitions_are_checked_with_pointers(harness: Harness) -> None:
    await shop(harness)
    bad = hero_test(
        variants=[{"key": "control", "weight": -1}, {"key": "b", "placements": {"nowhere": {}}}],
        coverage=2,
        metrics={"primary": [{"key": "m", "type": "conversion"}]},
    )
    response = await harness.client.post("/v1/experiments", json=bad, headers=harness.admin)
    assert_error(response, 422, "invalid_experiment")
    pointers = {e["pointer"] for e in response.json()["error"]["details"]["errors"]}
    assert {"/variants/0/weight", "/variants/1/placements/nowhere", "/coverage"} <= pointers
    assert any(p.startswith("/metrics/primary/0") for p in pointers)
    created = await call(harness, "POST", "/v1/experiments", hero_test())
    assert created["status"] == "draft" and created["phase"] == 0 and created["seed"] == "hero-test"
    response = await harness.client.post("/v1/experiments", json=hero_test(), headers=harness.admin)
    assert_error(response, 409, "experiment_exists")
    response = await harness.client.get("/v1/experiments/nope", headers=harness.admin)
    assert_error(response, 404, "experiment_not_found")
    response = await harness.client.post(
        "/v1/experiments", json=hero_test(key="x"), headers=harness.auth
    )
    assert response.status_code == 401


async def test_a_running_experiments_weights_change_only_in_a_new_phase(
    harness: Harness, clock: FrozenClock
) -> None:
    await shop(harness)
    await call(harness, "POST", "/v1/experiments", hero_test())
    running = await call(harness, "POST", "/v1/experiments/hero-test/start")
    assert running["status"] == "running" and running["phase"] == 1
    skewed = [
        {"key": "control", "weight": 1},
        {"key": "delivery", "weight": 3, "placements": {"home-hero": {"items": ["hero-b"]}}},
    ]
    response = await harness.client.patch(
        "/v1/experiments/hero-test", json={"variants": skewed}, headers=harness.admin
    )
    assert_error(response, 409, "phase_required")
    # what moves nobody changes in place
    renamed = await call(
        harness, "PATCH", "/v1/experiments/hero-test", {"name": "Hero", "coverage": 0.5}
    )
    assert renamed["phase"] == 1 and renamed["coverage"] == 0.5
    clock.advance(3600)
    phased = await call(
        harness,
        "PATCH",
        "/v1/experiments/hero-test",
        {"variants": skewed},
        newPhase="true",
        reason="more traffic",
    )
    assert phased["phase"] == 2
    assert [p["weights"] for p in phased["phases"]] == [
        {"control": 1.0, "delivery": 1.0},
        {"control": 1.0, "delivery": 3.0},
    ]
    assert (
        phased["phases"][0]["endedAt"] is not None
        and phased["phases"][1]["reason"] == "more traffic"
    )
    stopped = await call(harness, "POST", "/v1/experiments/hero-test/stop")
    assert stopped["status"] == "stopped"
    response = await harness.client.post("/v1/experiments/hero-test/stop", headers=harness.admin)
    assert_error(response, 409, "not_running")
    await call(harness, "DELETE", "/v1/experiments/hero-test")
    listed = await call(harness, "GET", "/v1/experiments")
    assert listed["data"] == []


async def test_experiments_in_one_namespace_claim_disjoint_ranges(harness: Harness) -> None:
    await shop(harness)
    for key, start, end in (("left", 0.0, 0.5), ("right", 0.5, 1.0), ("middle", 0.4, 0.6)):
        await call(
            harness,
            "POST",
            "/v1/experiments",
            hero_test(key=key, namespace={"id": "home", "start": start, "end": end}),
        )
    await call(harness, "POST", "/v1/experiments/left/start")
    await call(harness, "POST", "/v1/experiments/right/start")
    response = await harness.client.post("/v1/experiments/middle/start", headers=harness.admin)
    assert_error(response, 409, "namespace_overlap")
    # the two running ones never share a user: each decision is in exactly one
    seen = {"left": 0, "right": 0}
    for number in range(200):
        answer = await decide(harness, anonymousId=f"visitor-{number}")
        seen[answer["experiment"]["key"]] += 1
    assert seen["left"] > 60 and seen["right"] > 60 and sum(seen.values()) == 200


async def test_decisions_choose_the_variant_and_the_report_counts_from_the_lake(
    harness: Harness, clock: FrozenClock
) -> None:
    await shop(harness)
    await call(harness, "POST", "/v1/experiments", hero_test())
    await call(harness, "POST", "/v1/experiments/hero-test/start")
    variants: dict[str, str] = {}
    for number in range(120):
        user = f"user-{number}"
        answer = await decide(harness, userId=user)
        experiment = answer["experiment"]
        assert experiment["key"] == "hero-test" and experiment["phase"] == 1
        assert experiment["probability"] == 0.5
        shown = [item["id"] for item in answer["items"]]
        # the delivery variant shows its own item; control what the placement shows a user
        # it does not know yet (its default)
        assert shown == (["hero-b"] if experiment["variant"] == "delivery" else ["generic"])
        variants[user] = experiment["variant"]
    logged = [e for e in await harness.logged(1000) if e.get("event") == "Content Exposed"]
    assert len(logged) == 120
    assert logged[0]["properties"]["placements"][0]["experiment"]["key"] == "hero-test"
    # a third of each arm buys, the delivery arm twice as often
    clock.advance(7200)
    buyers = [
        u
        for n, u in enumerate(variants)
        if (n % 3 == 0 if variants[u] == "delivery" else n % 6 == 0)
    ]
    when = clock.now().isoformat()
    await send(
        harness,
        [
            {
                "type": "track",
                "userId": u,
                "event": "Order Completed",
                "properties": {"revenue": 30},
                "timestamp": when,
            }
            for u in buyers
        ],
    )
    clock.advance(3600)
    await settle(harness)
    results = await call(harness, "GET", "/v1/experiments/hero-test/results", daily="true")
    expected_units = {
        v: sum(1 for x in variants.values() if x == v) for v in ("control", "delivery")
    }
    assert results["units"] == expected_units
    assert results["srm"]["ok"] is True and results["method"] == "sequential"
    (metric,) = results["metrics"]
    assert metric["key"] == "purchase" and metric["control"]["users"] == expected_units["control"]
    (delivery,) = metric["variants"]
    bought = {v: sum(1 for u in buyers if variants[u] == v) for v in ("control", "delivery")}
    assert round(metric["control"]["mean"] * expected_units["control"]) == bought["control"]
    assert round(delivery["mean"] * expected_units["delivery"]) == bought["delivery"]
    assert delivery["relative"]["estimate"] > 0 and len(results["timeline"]) >= 1
    response = await harness.client.get("/v1/experiments/hero-test/chart", headers=harness.admin)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    report = await harness.client.get("/v1/experiments/hero-test/report", headers=harness.admin)
    assert report.status_code == 200 and "hero-test" in report.text and "purchase" in report.text


async def test_exposed_users_keep_their_variant_across_a_phase_and_an_identify(
    harness: Harness, clock: FrozenClock
) -> None:
    await shop(harness)
    await call(harness, "POST", "/v1/experiments", hero_test())
    await call(harness, "POST", "/v1/experiments/hero-test/start")
    allocation = Allocation("hero-test", (("control", 1.0), ("delivery", 1.0)))
    # a visitor whose anonymous id hashes to control, and the user id they log in with,
    # which hashes to delivery
    visitor = next(
        f"anon-{n}"
        for n in range(1000)
        if assign_variant(allocation, f"anon-{n}").variant == "control"
    )  # type: ignore[union-attr]
    login = next(
        f"member-{n}"
        for n in range(1000)
        if assign_variant(allocation, f"member-{n}").variant == "delivery"
    )  # type: ignore[union-attr]
    first = await decide(harness, anonymousId=visitor)
    assert first["experiment"]["variant"] == "control"
    await settle(harness)
    await send(
        harness,
        [{"type": "identify", "userId": login, "anonymousId": visitor, "traits": {"plan": "free"}}],
    )
    await settle(harness)
    again = await decide(harness, userId=login, anonymousId=visitor)
    assert again["experiment"]["variant"] == "control"
    # a new phase sends everyone new to delivery; the exposed visitor stays in control
    await call(
        harness,
        "PATCH",
        "/v1/experiments/hero-test",
        {
            "variants": [
                {"key": "control", "weight": 0},
                {
                    "key": "delivery",
                    "weight": 1,
                    "placements": {"home-hero": {"items": ["hero-b"]}},
                },
            ]
        },
        newPhase="true",
    )
    clock.advance(300)
    assert (await decide(harness, userId=login))["experiment"]["variant"] == "control"
    assert (await decide(harness, anonymousId="someone-new"))["experiment"]["variant"] == "delivery"


async def test_multivariate_cells_merge_their_factors_changes(harness: Harness) -> None:
    await shop(harness)
    body = {
        "key": "copy-test",
        "type": "multivariate",
        "placements": ["home-hero"],
        "factors": [
            {
                "key": "title",
                "levels": [
                    {"key": "sale"},
                    {"key": "bold", "placements": {"home-hero": {"fields": {"title": "BIG SALE"}}}},
                ],
            },
            {
                "key": "colour",
                "levels": [
                    {"key": "blue"},
                    {"key": "red", "placements": {"home-hero": {"fields": {"colour": "red"}}}},
                ],
            },
        ],
    }
    created = await call(harness, "POST", "/v1/experiments", body)
    assert [v["key"] for v in created["variants"]] == [
        "title=sale,colour=blue",
        "title=sale,colour=red",
        "title=bold,colour=blue",
        "title=bold,colour=red",
    ]
    await call(harness, "POST", "/v1/experiments/copy-test/start")
    seen = set()
    for number in range(80):
        answer = await decide(harness, anonymousId=f"v{number}")
        variant = answer["experiment"]["variant"]
        content = answer["items"][0]["content"]
        assert (content["title"] == "BIG SALE") == ("title=bold" in variant)
        assert (content["colour"] == "red") == ("colour=red" in variant)
        seen.add(variant)
    assert len(seen) == 4
    conflicting = {
        **body,
        "key": "clash",
        "factors": [
            body["factors"][0],
            {
                "key": "again",
                "levels": [
                    {"key": "x"},
                    {"key": "y", "placements": {"home-hero": {"fields": {"title": "Other"}}}},
                ],
            },
        ],
    }
    response = await harness.client.post("/v1/experiments", json=conflicting, headers=harness.admin)
    assert_error(response, 422, "invalid_experiment")
    assert "factor_conflict" in {e["code"] for e in response.json()["error"]["details"]["errors"]}


async def test_a_bandit_logs_propensities_and_moves_traffic_to_the_better_arm(
    harness: Harness, clock: FrozenClock
) -> None:
    await shop(harness)
    body = {
        "key": "hero-bandit",
        "type": "bandit",
        "placements": ["home-hero"],
        "variants": [
            {"key": "a", "placements": {"home-hero": {"items": ["hero-a"]}}},
            {"key": "b", "placements": {"home-hero": {"items": ["hero-b"]}}},
        ],
        "bandit": {
            "reward": {"key": "bought", "type": "conversion", "event": "Order Completed"},
            "minShare": 0.1,
            "windowHours": 24,
        },
    }
    await call(harness, "POST", "/v1/experiments", body)
    await call(harness, "POST", "/v1/experiments/hero-bandit/start")
    arms: dict[str, str] = {}
    for number in range(200):
        answer = await decide(harness, userId=f"shopper-{number}")
        experiment = answer["experiment"]
        assert experiment["context"] == "*" and experiment["probability"] == 0.5
        arms[f"shopper-{number}"] = experiment["variant"]
    clock.advance(3600)
    # arm b converts every second user, arm a every tenth
    buyers = [
        u for n, (u, arm) in enumerate(arms.items()) if (n % 2 == 0 if arm == "b" else n % 10 == 0)
    ]
    await send(
        harness,
        [
            {
                "type": "track",
                "userId": u,
                "event": "Order Completed",
                "timestamp": clock.now().isoformat(),
            }
            for u in buyers
        ],
    )
    clock.advance(3600)
    await settle(harness)
    updated = await call(harness, "POST", "/v1/experiments/hero-bandit/allocations")
    assert updated["decisions"] == 200
    shares = updated["allocations"]["*"]
    assert shares["b"] > 0.8 and shares["a"] >= 0.1 - 1e-9
    answer = await decide(harness, userId="newcomer")
    assert answer["experiment"]["probability"] == pytest.approx(
        shares[answer["experiment"]["variant"]], abs=1e-6
    )
    estimate = await call(
        harness, "POST", "/v1/experiments/hero-bandit/evaluate", {"policy": {"arm": "b"}}
    )
    ips = estimate["estimates"]["ips"]
    assert estimate["decisions"] == 200 and ips["ci"][0] < 0.5 < ips["ci"][1] + 0.1
    assert estimate["logged"]["value"] == pytest.approx(len(buyers) / 200)


async def test_summary_statistics_from_anywhere_are_analysed(harness: Harness) -> None:
    body = {
        "method": "frequentist",
        "metrics": [
            {
                "key": "conversion",
                "type": "mean",
                "variants": {
                    "control": {"n": 5000, "sum": 500, "sum_squares": 500},
                    "b": {"n": 5000, "sum": 600, "sum_squares": 600},
                },
            }
        ],
    }
    result = await call(harness, "POST", "/v1/experiments/analyze", body)
    (entry,) = result["metrics"][0]["variants"]
    assert entry["variant"] == "b" and entry["relative"]["estimate"] == pytest.approx(0.2)
    assert entry["pValue"] < 0.05 and entry["significant"] is True
    response = await harness.client.post(
        "/v1/experiments/analyze", json={**body, "method": "magic"}, headers=harness.admin
    )
    assert response.status_code in (400, 422) and "/method" in response.text


async def test_an_experiment_viewed_event_makes_the_variant_sticky(harness: Harness) -> None:
    """Another tool (or Client.assign) reports what a user saw: the worker keeps it, and
    decisions give that variant although the hash says the other."""
    await shop(harness)
    await call(harness, "POST", "/v1/experiments", hero_test())
    await call(harness, "POST", "/v1/experiments/hero-test/start")
    allocation = Allocation("hero-test", (("control", 1.0), ("delivery", 1.0)))
    user = next(
        f"reader-{n}"
        for n in range(1000)
        if (found := assign_variant(allocation, f"reader-{n}")) and found.variant == "delivery"
    )
    viewed = {
        "type": "track",
        "userId": user,
        "event": "Experiment Viewed",
        "properties": {"experiment_id": "hero-test", "variation_id": "control", "phase": 1},
    }
    await send(harness, [viewed])
    await settle(harness)
    assert (await decide(harness, userId=user))["experiment"]["variant"] == "control"


async def test_an_unknown_visitor_is_judged_as_a_user_with_no_segments(harness: Harness) -> None:
    """Targeting "not in a segment" takes a visitor the engine does not know yet; targeting
    "in a segment" does not."""
    await shop(harness)
    await call(
        harness,
        "POST",
        "/v1/segments",
        {"key": "vip", "condition": {"trait": "plan", "op": "eq", "value": "vip"}},
    )
    outsiders = hero_test(key="outsiders", targeting={"condition": {"not": {"segment": "vip"}}})
    await call(harness, "POST", "/v1/experiments", outsiders)
    await call(harness, "POST", "/v1/experiments/outsiders/start")
    answer = await decide(harness, anonymousId="first-visit")
    assert answer["experiment"]["key"] == "outsiders"
    await call(harness, "POST", "/v1/experiments/outsiders/stop")
    insiders = hero_test(key="insiders", targeting={"segments": ["vip"]})
    await call(harness, "POST", "/v1/experiments", insiders)
    await call(harness, "POST", "/v1/experiments/insiders/start")
    assert "experiment" not in await decide(harness, anonymousId="first-visit")
