"""``POST /v1/sql`` through the real app: a query over a real lake answers its columns, first
rows and total, as JSON or CSV; anything but one SELECT, and any reach for a file, is refused
with a JSON error; a long query is stopped by the time limit; only analysts and up may ask."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, assert_error, running_app
from tests.lake.conftest import normalized, track, write_lake

EVENTS = 30


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    data = tmp_path / "data"
    events = [normalized(track(i, user=f"u{i % 3}")) for i in range(EVENTS)]
    write_lake(data / "lake", events)
    async with running_app(data, run_lake_sink=False, console_sql_timeout_s=0.5) as h:
        yield h


async def test_a_query_answers_columns_rows_and_the_total(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/sql",
        json={
            "sql": "SELECT user_key, count(*) AS events FROM fact_events "
            "GROUP BY user_key ORDER BY user_key",
            "limit": 2,
        },
        headers=harness.admin,
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert [c["name"] for c in body["columns"]] == ["user_key", "events"]
    assert body["columns"][1]["type"] == "BIGINT"
    assert body["rows"] == [["u0", 10], ["u1", 10]]
    assert body["totalRows"] == 3 and body["truncated"] is True
    assert body["lakeVersion"] == 0


async def test_csv_by_accept_or_format(harness: Harness) -> None:
    query = {"sql": "SELECT event, message_id FROM fact_events ORDER BY message_id"}
    for response in (
        await harness.client.post(
            "/v1/sql", json=query, headers={**harness.admin, "Accept": "text/csv"}
        ),
        await harness.client.post("/v1/sql?format=csv", json=query, headers=harness.admin),
    ):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(response.text)))
        assert rows[0] == ["event", "message_id"]
        assert len(rows) == EVENTS + 1
        assert {row[0] for row in rows[1:]} == {"Product Viewed"}
        assert response.headers["x-personify-total-rows"] == str(EVENTS)


REFUSED = [
    ("SELECT * FROM read_csv('/etc/passwd')", "read_only"),
    ("SELECT * FROM read_text('/etc/hostname')", "read_only"),
    ("COPY (SELECT 1) TO '/tmp/personify-sql-test.csv'", "read_only"),
    ("ATTACH '/tmp/personify-sql-test.db' AS other", "read_only"),
    ("INSTALL httpfs", "read_only"),
    ("SET enable_external_access = true", "read_only"),
    ("SELECT 1; SELECT 2", "read_only"),
    ("INSERT INTO fact_events VALUES (1)", "read_only"),
    ("CREATE TABLE t AS SELECT 1", "read_only"),
    ("SELECT * FROM", "invalid_sql"),
    ("SELECT * FROM no_such_view", "invalid_sql"),
    ("-- only a comment", "invalid_sql"),
]


async def test_anything_but_one_select_inside_the_warehouse_is_refused(harness: Harness) -> None:
    for sql, code in REFUSED:
        response = await harness.client.post("/v1/sql", json={"sql": sql}, headers=harness.admin)
        error = assert_error(response, 422, code)
        assert error["message"], sql
    assert not Path("/tmp/personify-sql-test.csv").exists()
    assert not Path("/tmp/personify-sql-test.db").exists()


async def test_a_long_query_is_stopped_by_the_time_limit(harness: Harness) -> None:
    started = time.monotonic()
    response = await harness.client.post(
        "/v1/sql", json={"sql": "SELECT sum(range) FROM range(10000000000)"}, headers=harness.admin
    )
    error = assert_error(response, 422, "query_timeout")
    assert error["details"] == {"timeoutS": 0.5}
    assert time.monotonic() - started < 5
    # the next query runs as usual
    response = await harness.client.post(
        "/v1/sql", json={"sql": "SELECT 42 AS answer"}, headers=harness.admin
    )
    assert response.json()["rows"] == [[42]]


async def test_only_roles_with_the_sql_scope_may_ask(harness: Harness) -> None:
    _, viewer = harness.services.api_keys.create("sql-viewer", "viewer")
    _, analyst = harness.services.api_keys.create("sql-analyst", "analyst")
    query = {"sql": "SELECT 1"}
    assert_error(await harness.client.post("/v1/sql", json=query), 401, "missing_api_key")
    denied = await harness.client.post(
        "/v1/sql", json=query, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert denied.status_code == 403
    allowed = await harness.client.post(
        "/v1/sql", json=query, headers={"Authorization": f"Bearer {analyst}"}
    )
    assert allowed.status_code == 200


async def test_the_route_is_in_the_openapi_document_with_its_scope(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/sql"]["post"]
    assert operation["x-personify-scope"] == "sql"
    assert {"application/json", "text/csv"} <= set(operation["responses"]["200"]["content"])
    assert "422" in operation["responses"]
    body = await harness.client.post(
        "/v1/sql", json={"sql": "SELECT 1", "limit": 10**9}, headers=harness.admin
    )
    assert body.status_code == 400
