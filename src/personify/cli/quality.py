"""``personify quality …`` and ``personify lineage …``: data-quality runs and lineage."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from personify.cli.context import CliContext, echo_json


@click.group()
def quality() -> None:
    """Data-quality checks and their results."""


@quality.command("report")
@click.option("--stage", default=None, help="ingest, lake_batch, lake or features")
@click.option("--json", "as_json", is_flag=True, help="print the runs as JSON")
@click.option("--all-checks", is_flag=True, help="list passing checks too")
def quality_report(stage: str | None, as_json: bool, all_checks: bool) -> None:
    """Show the latest quality run of each stage (or of one stage)."""
    from personify.quality.results import QualityRepository
    from personify.store.database import open_database

    db = open_database(CliContext.current().settings)
    try:
        runs = QualityRepository(db).latest(stage)
    finally:
        db.dispose()
    if as_json:
        echo_json([r.to_dict() for r in runs])
        return
    if not runs:
        click.echo("no quality runs recorded yet")
        return
    for run in runs:
        click.echo(f"{run.created_at:%Y-%m-%d %H:%M:%S}  {run.report()}")
        if all_checks:
            for result in run.results:
                if result.passed:
                    where = f"{result.column}." if result.column else ""
                    seen = f" — {result.observed}" if result.observed else ""
                    click.echo(f"  ok       {where}{result.check}{seen}")


@quality.command("check")
def quality_check() -> None:
    """Run the lake-wide checks now (freshness, daily volume, duplicates) and record them."""
    from personify.lake.monitor import check_lake
    from personify.lake.table import Lake
    from personify.quality.results import QualityRepository
    from personify.store.database import open_database

    settings = CliContext.current().settings
    db = open_database(settings)
    try:
        run = check_lake(
            Lake.from_settings(settings),
            settings,
            now=datetime.now(UTC),
            record=QualityRepository(db).record,
            raise_on_failure=False,
        )
    finally:
        db.dispose()
    click.echo(run.report())
    if run.status == "failed":
        sys.exit(1)


@click.group()
def lineage() -> None:
    """Where derived datasets came from."""


@lineage.command("show")
@click.argument("lineage_id")
def lineage_show(lineage_id: str) -> None:
    """Show one lineage record (by id or a unique id prefix)."""
    from personify.quality.lineage import LineageRepository
    from personify.store.database import open_database

    db = open_database(CliContext.current().settings)
    try:
        record = LineageRepository(db).get(lineage_id)
    finally:
        db.dispose()
    echo_json(record.to_dict())


@lineage.command("list")
@click.option("--kind", default=None, help="feature_table, training_frame, ...")
@click.option("-n", "--limit", default=20, show_default=True)
def lineage_list(kind: str | None, limit: int) -> None:
    """List the newest lineage records."""
    from personify.quality.lineage import LineageRepository
    from personify.store.database import open_database

    db = open_database(CliContext.current().settings)
    try:
        records = LineageRepository(db).list(kind, limit=limit)
    finally:
        db.dispose()
    for r in records:
        versions = ",".join(f"{k}@{v}" for k, v in r.lake_versions.items())
        click.echo(
            f"{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {r.kind:<16} {versions}  {r.output or ''}"
        )
