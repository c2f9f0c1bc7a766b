"""The SQL page (``/console/sql``): a query box over the warehouse, the first rows of the
result as a table, and the whole result (up to ``MAX_RESULT_ROWS``) as a CSV download.

Both run through ``personify.lake.queries.run_readonly``, as ``POST /v1/sql`` does: one
SELECT on a locked-down DuckDB of its own, stopped after ``settings.console_sql_timeout_s``.
The page and the download are GET forms (a query changes nothing), so a result has a link
that can be shared with another analyst; the warehouse holds per-user data, so every query
is audited as a per-user read.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Final

from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread
from litestar.params import QueryParameter

from personify.errors import PersonifyError
from personify.http_errors import status_for
from personify.lake.queries import MAX_RESULT_ROWS, MAX_SQL_CHARS, QueryResult, run_readonly
from personify.lake.warehouse import VIEWS
from personify.runtime import Runtime, open_warehouse
from personify.ui.rendering import page_headers, render
from personify.ui.session import page

__all__ = ["PAGE_ROWS", "ROUTES"]

# rows the page shows (the download has up to MAX_RESULT_ROWS)
PAGE_ROWS: Final = 500
_EXAMPLE: Final = (
    "SELECT event, count(*) AS events\nFROM fact_events\nGROUP BY event\nORDER BY events DESC"
)

Query = Annotated[
    str | None,
    QueryParameter(max_length=MAX_SQL_CHARS, description="one SELECT over the warehouse"),
]


async def _run(request: Request[Any, Any, Any], sql: str, limit: int) -> QueryResult:
    runtime: Runtime = request.app.state.runtime
    return await sync_to_thread(
        run_readonly,
        functools.partial(open_warehouse, runtime.settings, runtime.db),
        sql,
        limit=limit,
        timeout_s=runtime.settings.console_sql_timeout_s,
    )


def _cell(value: Any) -> dict[str, Any]:
    """One table cell as the page shows it."""
    if value is None:
        return {"text": "NULL", "null": True, "num": False}
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        return {"text": text, "null": False, "num": False}
    is_num = isinstance(value, int | float) and not isinstance(value, bool)
    return {"text": str(value), "null": False, "num": is_num}


@get("/sql", opt=page("sql", per_user=True), name="console:sql")
async def sql_page(request: Request[Any, Any, Any], q: Query = None) -> Response[str]:
    """The query box and, when a query was sent, its result or what was wrong with it."""
    runtime: Runtime = request.app.state.runtime
    context: dict[str, Any] = {
        "query": q or "",
        "example": _EXAMPLE,
        "views": VIEWS,
        "page_rows": PAGE_ROWS,
        "max_rows": MAX_RESULT_ROWS,
        "timeout_s": runtime.settings.console_sql_timeout_s,
        "result": None,
        "rows": [],
        "error": None,
    }
    status = 200
    if q is not None and q.strip():
        try:
            result = await _run(request, q, PAGE_ROWS)
        except PersonifyError as exc:
            context["error"] = {"code": exc.code, "message": exc.message}
            status = status_for(exc)
        else:
            context["result"] = result
            context["rows"] = [[_cell(value) for value in row] for row in result.rows()]
    return render(request, "sql.html", status_code=status, title="SQL", **context)


@get("/sql.csv", opt=page("sql", per_user=True), name="console:sql-csv")
async def sql_csv(
    request: Request[Any, Any, Any],
    q: Annotated[
        str, QueryParameter(min_length=1, max_length=MAX_SQL_CHARS, description="the query")
    ],
) -> Response[str]:
    """The query's result as a CSV attachment (its first ``MAX_RESULT_ROWS`` rows)."""
    result = await _run(request, q, MAX_RESULT_ROWS)
    return Response(
        result.to_csv(),
        media_type="text/csv; charset=utf-8",
        headers={
            **page_headers(),
            "Content-Disposition": 'attachment; filename="query.csv"',
            "X-Personify-Total-Rows": str(result.total_rows),
            "X-Personify-Truncated": "true" if result.truncated else "false",
        },
    )


ROUTES = [sql_page, sql_csv]
