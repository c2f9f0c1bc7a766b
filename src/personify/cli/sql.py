"""``personify sql``: DuckDB over the lake's star schema."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from personify.cli.context import CliContext
from personify.errors import ValidationError


@click.command("sql")
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the result here (required for parquet)",
)
@click.option("--version", "version", type=int, default=None, help="query this lake version")
@click.option(
    "--max-rows",
    type=int,
    default=40,
    show_default=True,
    help="rows shown by --format table (0: all)",
)
def sql(query: str, fmt: str, output: Path | None, version: int | None, max_rows: int) -> None:
    """Run SQL over the lake's star schema (fact_events, dim_users, dim_items, dim_date)."""
    from personify.lake.table import Lake
    from personify.lake.warehouse import StateProfiles, Warehouse, json_lines, write_result
    from personify.store.database import open_database

    settings = CliContext.current().settings
    db = open_database(settings)
    try:
        with Warehouse(
            Lake.from_settings(settings), version=version, profiles=StateProfiles(db)
        ) as warehouse:
            if fmt == "table" and output is None:
                click.echo(warehouse.render(query, max_rows=max_rows))
                return
            result = warehouse.query(query)
    finally:
        db.dispose()
    if output is not None:
        write_result(result, "json" if fmt == "table" else fmt, output)  # type: ignore[arg-type]
        click.echo(f"{result.num_rows} rows -> {output}", err=True)
    elif fmt == "parquet":
        raise ValidationError("--format parquet needs --output FILE", code="missing_output")
    elif fmt == "json":
        for line in json_lines(result):
            click.echo(line.decode(), nl=False)
    else:
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(result, sink)
        with contextlib.suppress(AttributeError):
            sink.flush()
