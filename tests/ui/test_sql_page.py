"""The console's SQL page through the real app over HTTP: an analyst runs a query over a real
lake and sees the result table with its total, downloads it as CSV, is told clearly why a
write, a second statement or a file read is refused, and a long query is stopped by the time
limit; a viewer cannot reach the page."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, running_app
from tests.lake.conftest import normalized, track, write_lake
from tests.ui import sign_in

EVENTS = 12


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    data = tmp_path / "data"
    write_lake(data / "lake", [normalized(track(i, user=f"u{i % 4}")) for i in range(EVENTS)])
    async with running_app(data, run_lake_sink=False, console_sql_timeout_s=0.5) as h:
        yield h


@pytest.fixture
async def analyst(harness: Harness) -> Harness:
    _, secret = harness.services.api_keys.create("sql-analyst", "analyst")
    await sign_in(harness.client, secret, next_path="/console/sql")
    return harness


def _cells(html: str) -> list[list[str]]:
    body = html.split('<table class="sql-result">', 1)[1].split("</table>", 1)[0]
    return [
        re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        for row in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    ]


async def test_the_page_shows_the_query_box_and_the_views(analyst: Harness) -> None:
    page = await analyst.client.get("/console/sql")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<label for="q">' in page.text and 'id="q" name="q"' in page.text
    assert 'formaction="/console/sql.csv"' in page.text
    for view in ("fact_events", "dim_users", "dim_items", "dim_date"):
        assert view in page.text
    assert 'href="/console/sql" aria-current="page"' in page.text


async def test_a_query_shows_a_bounded_result_table_with_the_total(analyst: Harness) -> None:
    query = "SELECT user_key, count(*) AS events FROM fact_events GROUP BY 1 ORDER BY 1"
    page = await analyst.client.get("/console/sql", params={"q": query})
    assert page.status_code == 200, page.text
    assert '<th scope="col" title="VARCHAR">user_key</th>' in page.text
    assert _cells(page.text) == [
        ["u0", "3"],
        ["u1", "3"],
        ["u2", "3"],
        ["u3", "3"],
    ]
    assert "Query result: 4 rows" in page.text
    # the query stays in the box, escaped
    assert "GROUP BY 1 ORDER BY 1</textarea>" in page.text
    # 600 rows: the page shows 500 and says how many there were
    page = await analyst.client.get("/console/sql", params={"q": "SELECT * FROM range(600)"})
    assert len(_cells(page.text)) == 500
    assert "600 rows, the first 500 shown" in page.text


async def test_the_csv_download_has_every_row(analyst: Harness) -> None:
    query = "SELECT message_id, event, [1, 2] AS pair FROM fact_events ORDER BY message_id"
    response = await analyst.client.get("/console/sql.csv", params={"q": query})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="query.csv"'
    assert response.headers["cache-control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == EVENTS
    assert sorted(row["message_id"] for row in rows) == sorted(f"m{i}" for i in range(EVENTS))
    assert {row["event"] for row in rows} == {"Product Viewed"}
    assert rows[0]["pair"] == "[1,2]"
    # the result page links to the same download
    page = await analyst.client.get("/console/sql", params={"q": "SELECT 1 AS one"})
    link = re.search(r'href="(/console/sql\.csv\?q=[^"]+)"', page.text)
    assert link
    again = await analyst.client.get(link.group(1).replace("&amp;", "&"))
    assert again.text.splitlines() == ["one", "1"]


REFUSED = [
    ("SELECT * FROM read_csv('/etc/passwd')", "read_only", "reaches outside the warehouse"),
    ("COPY (SELECT 1) TO '/tmp/personify-console-sql.csv'", "read_only", "COPY statements"),
    ("ATTACH '/tmp/personify-console-sql.db'", "read_only", "ATTACH statements"),
    ("SELECT 1; SELECT 2", "read_only", "2 statements were sent"),
    ("INSERT INTO fact_events VALUES (1)", "read_only", "INSERT statements"),
    ("SELEC 1", "invalid_sql", "syntax error"),
]


async def test_writes_files_and_second_statements_are_refused_clearly(analyst: Harness) -> None:
    for sql, code, says in REFUSED:
        page = await analyst.client.get("/console/sql", params={"q": sql})
        assert page.status_code == 422, sql
        assert 'id="sql-error"' in page.text and 'role="alert"' in page.text
        assert says in page.text and f"<code>{code}</code>" in page.text, sql
        assert 'id="sql-result"' not in page.text
        csv_answer = await analyst.client.get("/console/sql.csv", params={"q": sql})
        assert csv_answer.status_code == 422, sql
        assert code in csv_answer.text
    assert not Path("/tmp/personify-console-sql.csv").exists()
    assert not Path("/tmp/personify-console-sql.db").exists()


async def test_a_long_query_is_interrupted_by_the_time_limit(analyst: Harness) -> None:
    started = time.monotonic()
    page = await analyst.client.get(
        "/console/sql",
        params={
            "q": "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range < b.range"
        },
    )
    assert time.monotonic() - started < 5
    assert page.status_code == 422
    assert "<code>query_timeout</code>" in page.text
    assert "ran longer than 0.5 s" in page.text


async def test_a_viewer_cannot_reach_the_page_or_the_download(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("sql-viewer", "viewer")
    await sign_in(harness.client, secret)
    for path in ("/console/sql", "/console/sql.csv?q=SELECT+1"):
        response = await harness.client.get(path, follow_redirects=False)
        assert response.status_code == 403
        assert "sql" in response.text
    overview = await harness.client.get("/console")
    assert 'href="/console/sql"' not in overview.text
