"""The segment routes through the real ASGI app: definitions with their versions, the 422s of
the condition language, roles, members pages, sizes, and the profile's ``segments``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.segments.tables import segment_members
from tests.api import Harness, assert_error, running_app

PRO = {"trait": "plan", "op": "eq", "value": "pro"}
SHOES = {
    "event": "Product Viewed",
    "where": [{"property": "category", "op": "eq", "value": "shoes"}],
    "within": "7d",
    "count": {"op": "gte", "value": 3},
}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


async def create(harness: Harness, key: str, condition: Any, **fields: Any) -> dict[str, Any]:
    body = {"key": key, "condition": condition, **fields}
    response = await harness.client.post("/v1/segments", json=body, headers=harness.admin)
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def add_members(harness: Harness, key: str, rows: list[dict[str, Any]]) -> None:
    """Membership rows written straight into the table the worker fills."""
    now = datetime.now(UTC)
    with harness.services.db.begin() as conn:
        conn.execute(
            segment_members.insert(),
            [
                {
                    "segment_key": key,
                    "segment_version": 1,
                    "entered_at": now,
                    "entry_reason": "evaluated",
                    "exited_at": None,
                    "exit_reason": None,
                    **row,
                }
                for row in rows
            ],
        )


async def test_create_read_update_archive_round_trip(harness: Harness) -> None:
    created = await create(harness, "vip", PRO, name="VIPs", description="pro plan")
    assert created["key"] == "vip" and created["version"] == 1
    assert (created["name"], created["description"]) == ("VIPs", "pro plan")
    assert created["condition"] == PRO and created["status"] == "active"
    assert created["kind"] == "rule"
    shown = await harness.client.get("/v1/segments/vip", headers=harness.admin)
    assert shown.json() == created

    changed = await harness.client.patch(
        "/v1/segments/vip",
        json={"condition": {"all": [PRO, SHOES]}, "description": "pro shoe fans"},
        headers=harness.admin,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["version"] == 2 and body["name"] == "VIPs"
    assert body["condition"] == {"all": [PRO, SHOES]}
    assert body["createdAt"] == created["createdAt"]

    await create(harness, "shoes", SHOES)
    listing = await harness.client.get("/v1/segments", headers=harness.admin)
    assert [s["key"] for s in listing.json()["data"]] == ["shoes", "vip"]

    archived = await harness.client.delete("/v1/segments/vip", headers=harness.admin)
    assert archived.status_code == 200, archived.text
    assert archived.json()["status"] == "archived" and archived.json()["version"] == 3
    listing = await harness.client.get("/v1/segments", headers=harness.admin)
    assert [s["key"] for s in listing.json()["data"]] == ["shoes"]
    everything = await harness.client.get(
        "/v1/segments", params={"archived": "true"}, headers=harness.admin
    )
    assert [s["key"] for s in everything.json()["data"]] == ["shoes", "vip"]
    # an archived segment is still shown, and its key can be taken again, as a new version
    shown = await harness.client.get("/v1/segments/vip", headers=harness.admin)
    assert shown.json()["status"] == "archived"
    again = await create(harness, "vip", SHOES)
    assert again["version"] == 4 and again["status"] == "active"

    versions = await harness.client.get("/v1/segments/vip/versions", headers=harness.admin)
    assert versions.status_code == 200, versions.text
    history = versions.json()
    assert history["key"] == "vip"
    assert [v["version"] for v in history["data"]] == [4, 3, 2, 1]
    assert [v["status"] for v in history["data"]] == ["active", "archived", "active", "active"]
    assert history["data"][3]["condition"] == PRO
    assert history["data"][2]["description"] == "pro shoe fans"


@pytest.mark.parametrize(
    ("condition", "pointer", "code"),
    [
        ({"all": [{"trait": "plan", "op": "equals", "value": "pro"}]}, "/all/0/op",
         "unknown_operator"),
        ({"any": [PRO, {"event": "Order Completed", "within": "7 days"}]}, "/any/1/within",
         "invalid_window"),
        ({"segment": "nope"}, "", "unknown_segment"),
    ],
)  # fmt: skip
async def test_a_bad_condition_is_422_pointing_at_the_problem(
    harness: Harness, condition: Any, pointer: str, code: str
) -> None:
    response = await harness.client.post(
        "/v1/segments", json={"key": "s", "condition": condition}, headers=harness.admin
    )
    error = assert_error(response, 422, "invalid_condition")
    assert [(e["pointer"], e["code"]) for e in error["details"]["errors"]] == [(pointer, code)]
    missing = await harness.client.get("/v1/segments/s", headers=harness.admin)
    assert_error(missing, 404, "segment_not_found")


async def test_a_loop_between_two_segments_is_422_and_changes_nothing(harness: Harness) -> None:
    await create(harness, "a", PRO)
    await create(harness, "b", {"all": [SHOES, {"segment": "a"}]})
    response = await harness.client.patch(
        "/v1/segments/a", json={"condition": {"not": {"segment": "b"}}}, headers=harness.admin
    )
    error = assert_error(response, 422, "invalid_condition")
    (problem,) = error["details"]["errors"]
    assert problem["pointer"] == "/not" and problem["code"] == "segment_cycle"
    assert problem["cycle"] == ["a", "b", "a"]
    shown = await harness.client.get("/v1/segments/a", headers=harness.admin)
    assert shown.json()["version"] == 1 and shown.json()["condition"] == PRO


async def test_conflicts_are_409(harness: Harness) -> None:
    await create(harness, "a", PRO)
    await create(harness, "b", {"segment": "a"})
    duplicate = await harness.client.post(
        "/v1/segments", json={"key": "a", "condition": SHOES}, headers=harness.admin
    )
    assert_error(duplicate, 409, "segment_exists")
    in_use = await harness.client.delete("/v1/segments/a", headers=harness.admin)
    error = assert_error(in_use, 409, "segment_in_use")
    assert error["details"] == {"usedBy": ["b"]}
    # once b no longer reads it, a can go
    await harness.client.patch("/v1/segments/b", json={"condition": PRO}, headers=harness.admin)
    gone = await harness.client.delete("/v1/segments/a", headers=harness.admin)
    assert gone.status_code == 200, gone.text


async def test_unknown_segments_are_404(harness: Harness) -> None:
    for method, path in [
        ("GET", "/v1/segments/nope"),
        ("PATCH", "/v1/segments/nope"),
        ("DELETE", "/v1/segments/nope"),
        ("GET", "/v1/segments/nope/versions"),
        ("GET", "/v1/segments/nope/members"),
        ("GET", "/v1/segments/nope/stats"),
    ]:
        body = {"name": "x"} if method == "PATCH" else None
        response = await harness.client.request(method, path, json=body, headers=harness.admin)
        assert_error(response, 404, "segment_not_found")
    # archived segments cannot be changed or archived again
    await create(harness, "old", PRO)
    await harness.client.delete("/v1/segments/old", headers=harness.admin)
    again = await harness.client.delete("/v1/segments/old", headers=harness.admin)
    assert_error(again, 404, "segment_not_found")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "bad_request"),
        (b"[1, 2]", "invalid_parameter"),
        (b'{"key": 7, "condition": {}}', "invalid_parameter"),
        (b'{"key": "a", "condition": {}, "colour": "red"}', "invalid_parameter"),
        (b'{"key": "a", "name": ["x"], "condition": {}}', "invalid_parameter"),
        (b'{"name": "no key", "condition": {}}', "invalid_parameter"),
        (b'{"key": "has space", "condition": {}}', "invalid_key"),
        (b'{"key": "a", "name": "' + b"n" * 201 + b'", "condition": {}}', "invalid_field"),
        (b'{"key": "a", "condition":' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
    ],
)
async def test_a_bad_body_is_400_in_the_error_shape(
    harness: Harness, body: bytes, code: str
) -> None:
    headers = {**harness.admin, "Content-Type": "application/json"}
    response = await harness.client.post("/v1/segments", content=body, headers=headers)
    assert_error(response, 400, code)
    listing = await harness.client.get("/v1/segments", headers=harness.admin)
    assert listing.json()["data"] == []


async def test_a_patch_without_changes_is_400(harness: Harness) -> None:
    await create(harness, "a", PRO)
    response = await harness.client.patch("/v1/segments/a", json={}, headers=harness.admin)
    assert_error(response, 400, "nothing_to_change")
    wrong = await harness.client.patch(
        "/v1/segments/a", json={"description": 5}, headers=harness.admin
    )
    assert_error(wrong, 400, "invalid_parameter")


async def test_keys_and_roles(harness: Harness) -> None:
    await create(harness, "a", PRO)
    assert_error(await harness.client.get("/v1/segments"), 401, "missing_api_key")
    bad = {"Authorization": "Bearer pk_nope"}
    assert_error(await harness.client.get("/v1/segments/a", headers=bad), 401, "invalid_api_key")
    _, secret = harness.services.api_keys.create("reader", "read")
    reader = {"Authorization": f"Bearer {secret}"}
    for path in [
        "/v1/segments",
        "/v1/segments/a",
        "/v1/segments/a/versions",
        "/v1/segments/a/members",
        "/v1/segments/a/stats",
    ]:
        response = await harness.client.get(path, headers=reader)
        assert response.status_code == 200, (path, response.text)
    writes = [
        ("POST", "/v1/segments", {"key": "b", "condition": PRO}),
        ("PATCH", "/v1/segments/a", {"name": "renamed"}),
        ("DELETE", "/v1/segments/a", None),
    ]
    for method, path, body in writes:
        response = await harness.client.request(method, path, json=body, headers=reader)
        assert_error(response, 403, "forbidden")
        unauthenticated = await harness.client.request(method, path, json=body)
        assert_error(unauthenticated, 401, "missing_api_key")
    shown = await harness.client.get("/v1/segments/a", headers=reader)
    assert shown.json()["version"] == 1 and shown.json()["status"] == "active"
    assert (await harness.client.get("/v1/segments/b", headers=reader)).status_code == 404


async def test_members_page_by_profile_id_with_a_cursor(harness: Harness) -> None:
    await create(harness, "vip", PRO)
    await create(harness, "other", SHOES)
    entered = datetime(2024, 5, 1, 12, tzinfo=UTC)
    add_members(
        harness,
        "vip",
        [{"profile_id": f"p{n}", "entered_at": entered + timedelta(hours=n)} for n in (3, 1, 5)]
        + [
            {"profile_id": "p2", "segment_version": 2},
            {"profile_id": "p4"},
            # a stay that ended is not a member
            {"profile_id": "p0", "exited_at": entered, "exit_reason": "evaluated"},
        ],
    )
    add_members(harness, "other", [{"profile_id": "p9"}])

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await harness.client.get(
            "/v1/segments/vip/members", params=params, headers=harness.admin
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["data"])
        cursor = body["next"]
        if cursor is None:
            break
    assert [[m["profileId"] for m in page] for page in pages] == [
        ["p1", "p2"],
        ["p3", "p4"],
        ["p5"],
    ]
    first = pages[0][0]
    assert first == {
        "profileId": "p1",
        "since": (entered + timedelta(hours=1)).isoformat(),
        "segmentVersion": 1,
    }
    assert pages[0][1]["segmentVersion"] == 2

    everyone = await harness.client.get(
        "/v1/segments/vip/members", params={"limit": 1000}, headers=harness.admin
    )
    assert len(everyone.json()["data"]) == 5 and everyone.json()["next"] is None
    for limit in ("0", "1001", "x"):
        response = await harness.client.get(
            "/v1/segments/vip/members", params={"limit": limit}, headers=harness.admin
        )
        assert_error(response, 400, "invalid_parameter")


async def test_stats_count_members_now_and_at_each_day_end(harness: Harness) -> None:
    await create(harness, "vip", PRO)
    now = datetime.now(UTC)
    add_members(
        harness,
        "vip",
        [
            {"profile_id": "stays", "entered_at": now - timedelta(days=3)},
            {
                "profile_id": "left",
                "entered_at": now - timedelta(days=5),
                "exited_at": now - timedelta(days=2),
                "exit_reason": "evaluated",
            },
        ],
    )
    response = await harness.client.get(
        "/v1/segments/vip/stats", params={"days": 7}, headers=harness.admin
    )
    assert response.status_code == 200, response.text
    stats = response.json()
    assert {k: stats[k] for k in ("key", "version", "status", "size", "entries", "exits")} == {
        "key": "vip",
        "version": 1,
        "status": "active",
        "size": 1,
        "entries": 2,
        "exits": 1,
    }
    sizes = [point["size"] for point in stats["series"]]
    # before either entered, both in (the day between 3 and 2 days ago), one now
    assert len(sizes) == 7
    assert (sizes[0], max(sizes), sizes[-1]) == (0, 2, 1)
    default = await harness.client.get("/v1/segments/vip/stats", headers=harness.admin)
    assert len(default.json()["series"]) == 30
    for days in ("0", "367", "many"):
        response = await harness.client.get(
            "/v1/segments/vip/stats", params={"days": days}, headers=harness.admin
        )
        error = assert_error(response, 400, "invalid_parameter")
        assert error["details"] == {"parameter": "days"}


async def test_the_profile_document_lists_its_segments(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/batch",
        json={"batch": [{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}]},
        headers=harness.auth,
    )
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    document = (await harness.client.get("/v1/profiles/u1", headers=harness.admin)).json()
    assert document["segments"] == []
    profile_id = document["profileId"]

    await create(harness, "vip", PRO)
    await create(harness, "gone", SHOES)
    entered = datetime(2024, 5, 1, 12, tzinfo=UTC)
    add_members(
        harness,
        "vip",
        [{"profile_id": profile_id, "entered_at": entered}],
    )
    add_members(
        harness,
        "gone",
        [
            {
                "profile_id": profile_id,
                "entered_at": entered - timedelta(days=1),
                "exited_at": entered - timedelta(hours=1),
                "exit_reason": "evaluated",
            }
        ],
    )
    response = await harness.client.get("/v1/profiles/u1", headers=harness.admin)
    assert response.status_code == 200, response.text
    assert response.json()["segments"] == [{"key": "vip", "since": entered.isoformat()}]
    assert response.json()["profileId"] == profile_id

    # read as of a time, the document lists the stays that covered that time
    moment = datetime.now(UTC)
    await create(harness, "later", PRO)
    add_members(
        harness, "later", [{"profile_id": profile_id, "entered_at": moment + timedelta(hours=1)}]
    )
    now = await harness.client.get("/v1/profiles/u1", headers=harness.admin)
    assert [s["key"] for s in now.json()["segments"]] == ["later", "vip"]
    then = await harness.client.get(
        "/v1/profiles/u1", params={"as_of": moment.isoformat()}, headers=harness.admin
    )
    assert then.status_code == 200, then.text
    assert then.json()["segments"] == [{"key": "vip", "since": entered.isoformat()}]


async def test_the_routes_are_in_the_openapi_document(harness: Harness) -> None:
    paths = (await harness.client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/segments"]) == {"get", "post"}
    assert set(paths["/v1/segments/{key}"]) == {"get", "patch", "delete"}
    for tail in ("versions", "members", "stats"):
        assert "get" in paths[f"/v1/segments/{{key}}/{tail}"]
    create_op = paths["/v1/segments"]["post"]
    assert create_op["security"] == [{"apiKey": ["segments:write"]}]
    assert {"201", "400", "401", "403", "409", "422"} <= set(create_op["responses"])
    assert {"200", "404", "409"} <= set(paths["/v1/segments/{key}"]["delete"]["responses"])
    days = next(
        p for p in paths["/v1/segments/{key}/stats"]["get"]["parameters"] if p["name"] == "days"
    )
    assert (days["schema"]["minimum"], days["schema"]["maximum"]) == (1, 366)
    profile = paths["/v1/profiles/{id}"]["get"]["responses"]["200"]
    assert profile["content"]["application/json"]["schema"]


async def test_rfm_runs_over_the_api(harness: Harness) -> None:
    missing = await harness.client.get("/v1/rfm", headers=harness.admin)
    assert_error(missing, 404, "rfm_not_run")
    # a read key reads, only an admin key runs
    _key, secret = harness.services.api_keys.create("reader-rfm", "read")
    reader = {"Authorization": f"Bearer {secret}"}
    refused = await harness.client.post("/v1/rfm/runs", headers=reader)
    assert refused.status_code == 403, refused.text

    ran = await harness.client.post("/v1/rfm/runs", headers=harness.admin)
    assert ran.status_code == 201, ran.text
    run = ran.json()
    assert run["buyers"] == 0 and len(run["cutPoints"]["recencyDays"]) == 4
    assert run["cells"][0] == "rfm-champions"
    shown = await harness.client.get("/v1/rfm", headers=reader)
    assert shown.status_code == 200 and shown.json()["run"] == run["run"]

    # the cells are segments, kept by the runs: listed, readable, not editable
    listed = await harness.client.get("/v1/segments", headers=harness.admin)
    keys = {s["key"] for s in listed.json()["data"]}
    assert {"rfm-champions", "rfm-at_risk", "rfm-lost"} <= keys
    cell = await harness.client.get("/v1/segments/rfm-loyal", headers=harness.admin)
    assert cell.json()["kind"] == "rfm" and cell.json()["version"] == run["run"]
    edit = await harness.client.patch(
        "/v1/segments/rfm-loyal", json={"name": "mine"}, headers=harness.admin
    )
    assert_error(edit, 409, "segment_managed")
    taken = await harness.client.post(
        "/v1/segments",
        json={"key": "rfm-mine", "condition": {"segment": "rfm-loyal"}},
        headers=harness.admin,
    )
    assert_error(taken, 400, "invalid_key")
    # a rule may read a cell
    await create(harness, "loyal-too", {"segment": "rfm-loyal"})
