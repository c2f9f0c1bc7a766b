"""Read-only SQL over the warehouse: ``POST /v1/sql`` (scope ``sql``: analysts and up).

The query runs on a locked-down DuckDB of its own over the lake's star schema (fact_events,
dim_users, dim_items, dim_date), one SELECT at a time, stopped after
``settings.console_sql_timeout_s`` (``personify.lake.queries``, the console's SQL page runs
the same function). The answer is JSON (columns, the first ``limit`` rows, the total) or,
with ``Accept: text/csv`` or ``?format=csv``, the same rows as a CSV attachment.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, Router, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import JSONBody, QueryParameter

from personify.api.documents import admin_responses, error_response
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.lake.queries import MAX_RESULT_ROWS, MAX_SQL_CHARS, QueryResult, run_readonly
from personify.runtime import Runtime, open_warehouse

__all__ = ["sql_router"]

CSV: Final = "text/csv"
# rows answered when the body names no limit
_DEFAULT_LIMIT: Final = 1000


class SqlQuery(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/sql``."""

    sql: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_SQL_CHARS,
            description="one SELECT (or WITH … SELECT) over fact_events, dim_users, dim_items "
            "and dim_date",
        ),
    ]
    limit: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_RESULT_ROWS,
            description="rows answered at most (the rest are only counted)",
        ),
    ] = _DEFAULT_LIMIT


class SqlColumn(msgspec.Struct):
    """A result column: its name and DuckDB type (BIGINT, VARCHAR, TIMESTAMP WITH TIME ZONE…)."""

    name: str
    type: str


class SqlResult(msgspec.Struct):
    """A query's first rows (moments as ISO-8601, bytes as base64), how many it had in all,
    and the lake version it read."""

    columns: list[SqlColumn]
    rows: list[list[Any]]
    totalRows: int
    truncated: Annotated[bool, msgspec.Meta(description="more rows than `limit` matched")]
    elapsedMs: float
    lakeVersion: int | None


@dataclass
class _SqlOperation(Operation):
    """The 200 answer is JSON or, when asked for, CSV."""

    def __post_init__(self) -> None:
        answers = self.responses or {}
        ok = answers.get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                CSV: OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="a header line, then rows")
                ),
            }


def _wants_csv(request: Request[Any, Any, Any], fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    return CSV in request.headers.get("accept", "")


def _csv_answer(result: QueryResult) -> Response[str]:
    return Response(
        result.to_csv(),
        media_type=f"{CSV}; charset=utf-8",
        headers={
            "content-disposition": 'attachment; filename="query.csv"',
            "cache-control": "no-store",
            "x-personify-total-rows": str(result.total_rows),
            "x-personify-truncated": "true" if result.truncated else "false",
        },
    )


def _json_answer(result: QueryResult) -> Response[SqlResult]:
    return Response(
        SqlResult(
            columns=[SqlColumn(n, t) for n, t in zip(result.columns, result.types, strict=True)],
            rows=result.rows(),
            totalRows=result.total_rows,
            truncated=result.truncated,
            elapsedMs=round(result.elapsed_ms, 3),
            lakeVersion=result.lake_version,
        ),
        headers={"cache-control": "no-store"},
    )


@post(
    "/v1/sql",
    opt=needs("sql"),
    status_code=200,
    operation_class=_SqlOperation,
    responses={
        200: ResponseSpec(
            SqlResult, description="the result (or CSV, with Accept: text/csv or ?format=csv)"
        ),
        **admin_responses(),
        422: error_response(
            "invalid_sql (empty, too long, a syntax or name error), read_only (anything but "
            "one SELECT, or a query reaching files), query_timeout (ran past the time limit; "
            "details.timeoutS), query_failed"
        ),
    },
)
async def run_sql(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: JSONBody[SqlQuery],
    format: Annotated[
        str | None,
        QueryParameter(pattern="^(json|csv)$", description="json or csv (else by Accept)"),
    ] = None,
) -> Response[Any]:
    """Run one read-only query over the warehouse, stopped after the configured time."""
    result = await sync_to_thread(
        run_readonly,
        functools.partial(open_warehouse, runtime.settings, runtime.db),
        data.sql,
        limit=data.limit,
        timeout_s=runtime.settings.console_sql_timeout_s,
    )
    return _csv_answer(result) if _wants_csv(request, format) else _json_answer(result)


def sql_router() -> Router:
    """The SQL route, behind the API key guard (scope ``sql``)."""
    return Router(
        "/", route_handlers=[run_sql], guards=[authorize], security=BEARER_SECURITY, tags=["sql"]
    )
