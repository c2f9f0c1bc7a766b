"""Read-only, time-limited SQL over the warehouse, for people: the console's SQL page and
``POST /v1/sql`` run every query through ``run_readonly``.

The warehouse is an in-memory DuckDB over Arrow, but DuckDB itself can read and write local
files (``read_csv('/etc/passwd')``, ``COPY … TO``, ``ATTACH``), install extensions and change
its own settings. So a query from outside runs on a warehouse of its own that is locked down
once its views exist:

* ``enable_external_access = false``: no file, directory, network or extension access (the
  lake is already registered as an Arrow dataset, which pyarrow reads, not DuckDB);
* ``python_enable_replacements = false``: a table name never resolves to a Python object;
* ``lock_configuration = true``: no ``SET`` can undo the two above;
* exactly one statement, and DuckDB's own parser (``duckdb.extract_statements``) must call it a
  ``SELECT`` (which covers ``WITH``, ``FROM t``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
  ``SUMMARIZE``): no ``INSERT``, ``COPY``, ``ATTACH``, ``PRAGMA``, ``SET`` or ``CALL``;
* a timer interrupts the query (``DuckDBPyConnection.interrupt``) after ``timeout_s``.

The result streams out of DuckDB in Arrow batches: the first ``limit`` rows are kept, the
rest only counted, so the total is known without holding a large result in memory.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import duckdb
import pyarrow as pa

from personify.errors import BackendUnavailable, InvalidDefinition, PersonifyError
from personify.lake.warehouse import Warehouse

__all__ = [
    "MAX_RESULT_ROWS",
    "MAX_SQL_CHARS",
    "QueryResult",
    "check_read_only",
    "lock_down",
    "plain",
    "run_readonly",
]

# a query longer than this is not typed by a person
MAX_SQL_CHARS: Final = 100_000
# the most rows a caller may keep (a CSV download's bound)
MAX_RESULT_ROWS: Final = 100_000
# rows per Arrow batch streamed out of DuckDB
_BATCH_ROWS: Final = 10_000
_READ_ONLY_HINT: Final = (
    "only one read-only query (SELECT or WITH … SELECT) is allowed here; the warehouse's views "
    "are fact_events, dim_users, dim_items and dim_date"
)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The first rows of a query's result, and how many it had in all."""

    columns: list[str]
    # DuckDB's name of each column's type (BIGINT, VARCHAR, TIMESTAMP WITH TIME ZONE…)
    types: list[str]
    # at most the ``limit`` asked for
    table: pa.Table
    total_rows: int
    elapsed_ms: float
    lake_version: int | None

    @property
    def truncated(self) -> bool:
        """Whether the result had more rows than were kept."""
        kept: int = self.table.num_rows
        return self.total_rows > kept

    def rows(self) -> list[list[Any]]:
        """The kept rows as JSON-ready values (see ``plain``)."""
        columns = [self.table.column(i).to_pylist() for i in range(self.table.num_columns)]
        return [[plain(column[i]) for column in columns] for i in range(self.table.num_rows)]

    def to_csv(self) -> str:
        """The kept rows as CSV with a header line; lists and structs as JSON text."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(self.columns)
        for row in self.rows():
            writer.writerow(_csv_cell(value) for value in row)
        return out.getvalue()


def plain(value: Any) -> Any:
    """A DuckDB/Arrow value as plain JSON: moments and dates in ISO-8601, decimals as numbers,
    bytes as base64, NaN and infinities as null, integers past 64 bits as text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        if value == value.to_integral_value():
            return plain(int(value))
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "" if value is None else value


def check_read_only(sql: str) -> str:
    """The one read-only statement in ``sql``, as DuckDB's parser split it; raises
    ``InvalidDefinition`` (``invalid_sql`` for an empty, too long or unparsable query,
    ``read_only`` for anything but a single SELECT)."""
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidDefinition(
            f"a query has at most {MAX_SQL_CHARS:,} characters",
            code="invalid_sql",
            details={"maxChars": MAX_SQL_CHARS},
        )
    if not sql.strip():
        raise InvalidDefinition("the query is empty", code="invalid_sql")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidDefinition(f"SQL syntax error: {exc}", code="invalid_sql") from exc
    if not statements:
        raise InvalidDefinition("the query is empty (only comments)", code="invalid_sql")
    if len(statements) > 1:
        raise InvalidDefinition(
            f"{len(statements)} statements were sent; {_READ_ONLY_HINT}",
            code="read_only",
            details={"statements": len(statements)},
        )
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        kind = statement.type.name
        raise InvalidDefinition(
            f"{kind} statements are refused; {_READ_ONLY_HINT}",
            code="read_only",
            details={"statement": kind},
        )
    return statement.query


def lock_down(conn: duckdb.DuckDBPyConnection) -> None:
    """Cut ``conn`` off from files, extensions and Python objects, for good (module)."""
    conn.execute("SET python_enable_replacements = false")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")


def _query_error(exc: duckdb.Error) -> PersonifyError:
    if isinstance(exc, duckdb.PermissionException):
        return InvalidDefinition(
            f"the query reaches outside the warehouse, which is refused: {exc}",
            code="read_only",
        )
    if isinstance(exc, duckdb.IOException):
        return BackendUnavailable(f"the lake could not be read: {exc}", code="lake_unavailable")
    if isinstance(exc, duckdb.ParserException):
        return InvalidDefinition(f"SQL syntax error: {exc}", code="invalid_sql")
    if isinstance(exc, duckdb.CatalogException | duckdb.BinderException):
        return InvalidDefinition(f"SQL error: {exc}", code="invalid_sql")
    return InvalidDefinition(f"the query failed: {exc}", code="query_failed")


def run_readonly(
    warehouse_factory: Callable[[], Warehouse],
    sql: str,
    *,
    limit: int,
    timeout_s: float,
) -> QueryResult:
    """Run one read-only query on a locked-down warehouse of its own; keep its first
    ``limit`` rows and count the rest (module docstring).

    Raises ``InvalidDefinition``: ``invalid_sql``, ``read_only``, ``query_failed``, or
    ``query_timeout`` when it ran past ``timeout_s``; ``BackendUnavailable`` when the lake
    cannot be read."""
    if not 0 <= limit <= MAX_RESULT_ROWS:
        raise InvalidDefinition(
            f"limit is between 0 and {MAX_RESULT_ROWS:,}",
            code="invalid_parameter",
            details={"parameter": "limit"},
        )
    query = check_read_only(sql)
    with warehouse_factory() as warehouse:
        conn = warehouse.connection
        try:
            lock_down(conn)
        except duckdb.Error as exc:
            raise BackendUnavailable(
                f"the warehouse could not be locked down: {exc}", code="warehouse_unavailable"
            ) from exc
        # the timer interrupts only while the query runs: never after it finished
        guard = threading.Lock()
        running = True
        timed_out = False

        def interrupt() -> None:
            nonlocal timed_out
            with guard:
                if running:
                    timed_out = True
                    conn.interrupt()

        timer = threading.Timer(timeout_s, interrupt)
        timer.daemon = True
        started = time.perf_counter()
        timer.start()
        try:
            kept: list[pa.RecordBatch] = []
            kept_rows = total = 0
            relation = warehouse.relation(query)
            if relation is None:  # a SELECT always has a result; kept for the type's sake
                raise InvalidDefinition(_READ_ONLY_HINT, code="read_only")
            columns = list(relation.columns)
            types = [str(kind) for kind in relation.types]
            reader = relation.to_arrow_reader(_BATCH_ROWS)
            schema = reader.schema
            for batch in reader:
                total += batch.num_rows
                if kept_rows < limit:
                    part = batch.slice(0, limit - kept_rows)
                    kept.append(part)
                    kept_rows += part.num_rows
        except duckdb.Error as exc:
            if timed_out:
                raise InvalidDefinition(
                    f"the query ran longer than {timeout_s:g} s and was stopped; narrow it "
                    "(a WHERE on timestamp or event_date, a LIMIT) and run it again",
                    code="query_timeout",
                    details={"timeoutS": timeout_s},
                ) from exc
            raise _query_error(exc) from exc
        finally:
            with guard:
                running = False
            timer.cancel()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return QueryResult(
            columns=columns,
            types=types,
            table=pa.Table.from_batches(kept, schema=schema),
            total_rows=total,
            elapsed_ms=elapsed_ms,
            lake_version=warehouse.version,
        )
