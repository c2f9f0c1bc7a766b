"""Commands of the analytical side: ``lake``, ``import``, ``sql``, ``quality``, ``lineage``.

``personify.cli.main`` registers them with ``main.add_command``. This module does not import
``personify.cli.main``, so either can be imported first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from personify.errors import ValidationError
from personify.settings import Settings


def _settings() -> Settings:
    root = click.get_current_context().find_root()
    settings = root.meta.get("personify.lake.settings")
    if not isinstance(settings, Settings):
        settings = Settings()
        root.meta["personify.lake.settings"] = settings
    return settings


def _echo_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def parse_moment(text: str) -> datetime:
    """An ISO-8601 date or timestamp from the command line, as aware UTC."""
    from personify.events.normalize import parse_timestamp

    return parse_timestamp("time", text if "T" in text or " " in text else text + "T00:00:00Z")


# -- lake ------------------------------------------------------------------------------------


@click.group()
def lake() -> None:
    """The lake: raw events in Delta Lake."""


@lake.command("sink")
@click.option("--once", is_flag=True, help="write everything in the log, then exit")
def lake_sink(once: bool) -> None:
    """Run the lake writer: the log's `lake` consumer group, written to Delta in micro-batches."""
    from personify.eventlog.base import open_eventlog
    from personify.lake.sink import LakeSink
    from personify.store.database import open_database

    settings = _settings()

    async def run() -> None:
        log = open_eventlog(settings)
        db = open_database(settings)
        await log.start()
        sink = LakeSink.from_settings(settings, log, db=db)
        try:
            if once:
                while (await sink.process_once()).read:
                    pass
            else:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
                click.echo(f"lake sink: {sink.consumer} writing to {sink.lake_uri}", err=True)
                await sink.run(stop)
        finally:
            await log.close()
            db.dispose()
        click.echo(
            f"lake sink: wrote {sink.events_written} events in {sink.batches_written} batches"
        )

    asyncio.run(run())


@lake.command("optimize")
@click.option(
    "--retention-hours",
    type=int,
    default=None,
    help="vacuum files removed longer ago than this (default PERSONIFY_LAKE_VACUUM_RETENTION_HOURS)",
)
@click.option("--no-vacuum", is_flag=True, help="compact only")
@click.option(
    "--full", is_flag=True, help="also delete files no commit references (from crashed writes)"
)
def lake_optimize(retention_hours: int | None, no_vacuum: bool, full: bool) -> None:
    """Compact small files into large ones and vacuum old ones (safe while writing continues)."""
    from personify.lake.table import Lake

    settings = _settings()
    retention = settings.lake_vacuum_retention_hours if retention_hours is None else retention_hours
    if retention < 1:
        raise ValidationError(
            "--retention-hours must be at least 1: queries running on an older version still "
            "read the files a compaction removed",
            code="invalid_retention",
        )
    result = Lake.from_settings(settings).optimize(
        retention_hours=retention, vacuum=not no_vacuum, full=full
    )
    click.echo(
        f"compacted {result.files_removed} files into {result.files_added}, "
        f"vacuumed {result.files_vacuumed}; version {result.version_before} -> "
        f"{result.version_after}"
    )


@lake.command("info")
def lake_info() -> None:
    """Show the lake's location, version, files, rows and recorded log offsets."""
    from personify.lake.sink import LAKE_GROUP
    from personify.lake.table import METADATA_OFFSETS, Lake

    lake_ = Lake.from_settings(_settings())
    if not lake_.exists():
        click.echo(f"{lake_.uri}: no table yet")
        return
    table = lake_.open()
    offsets = next((h[METADATA_OFFSETS] for h in lake_.history(200) if METADATA_OFFSETS in h), None)
    _echo_json(
        {
            "uri": lake_.uri,
            "version": table.version(),
            "files": len(table.file_uris()),
            "rows": table.count(),
            "columns": len(table.schema().fields),
            "group": LAKE_GROUP,
            "lastOffsets": msgspec.json.decode(offsets) if offsets else None,
        }
    )


@lake.command("features")
@click.option("--as-of", "as_of", required=True, help="the cut-off time T (ISO-8601)")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def lake_features(as_of: str, output: Path) -> None:
    """Write every user's feature vector as of T (point in time) to a Parquet file."""
    from personify.predict.training import FeatureJob

    job = FeatureJob.from_settings(_settings())
    result = job.features_as_of(parse_moment(as_of), output=output)
    click.echo(f"{result.row_count} users -> {output} (lineage {result.lineage_id})")


@lake.command("training-frame")
@click.option("--as-of", "as_of", required=True, help="the cut-off time T (ISO-8601)")
@click.option("--label", type=click.Choice(["churn", "ltv"]), required=True)
@click.option("--horizon-days", type=float, default=None, help="30 for churn, 90 for ltv")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def lake_training_frame(as_of: str, label: str, horizon_days: float | None, output: Path) -> None:
    """Write features as of T plus a label from (T, T + horizon] to a Parquet file."""
    from personify.predict.training import FeatureJob

    job = FeatureJob.from_settings(_settings())
    result = job.training_frame(
        parse_moment(as_of), label=label, horizon_days=horizon_days, output=output
    )
    click.echo(f"{result.row_count} rows -> {output} (lineage {result.lineage_id})")


# -- import ----------------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--source",
    "source_name",
    default="import",
    show_default=True,
    help="the source the events are attributed to (created when absent)",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet"]),
    default=None,
    help="default: from the file name",
)
@click.option(
    "--rejected",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="where rejected rows go (default FILE.rejected.jsonl)",
)
def import_events(file: Path, source_name: str, fmt: str | None, rejected: Path | None) -> None:
    """Import historical events from JSON lines, CSV or Parquet through the collector's checks."""
    from personify.errors import NotFound
    from personify.eventlog.base import open_eventlog
    from personify.events.hashing import PiiHasher
    from personify.events.normalize import Normalizer
    from personify.ingest.importer import (
        EventImporter,
        FileFormat,
        detect_format,
        progress_total,
        read_rows,
    )
    from personify.ingest.sources import SourceRepository
    from personify.quality.checks import QualityContext
    from personify.quality.results import QualityRepository
    from personify.store.database import open_database

    settings = _settings()
    file_format: FileFormat = fmt if fmt is not None else detect_format(file)  # type: ignore[assignment]
    rejected_path = rejected or file.with_name(file.name + ".rejected.jsonl")
    db = open_database(settings)
    sources = SourceRepository(db)
    try:
        source = sources.get(source_name)
    except NotFound:
        source, _ = sources.create(source_name)
        click.echo(f"created source {source.name} ({source.id})", err=True)
    hasher = PiiHasher(settings.resolved_pii_hash_key(), settings.pii_paths)
    normalizer = Normalizer(
        hasher,
        max_event_bytes=settings.max_event_bytes,
        future_tolerance_s=settings.future_tolerance_hours * 3600.0,
    )
    now = datetime.now(UTC)
    quality = QualityContext(now=now, future_tolerance_hours=settings.future_tolerance_hours)

    async def run() -> Any:
        log = open_eventlog(settings)
        await log.start()
        try:
            importer = EventImporter(
                log,
                normalizer,
                hasher,
                source,
                quality=quality,
                record_quality=QualityRepository(db).record,
            )
            with click.progressbar(
                length=progress_total(file, file_format),
                label=f"importing {file.name}",
                file=sys.stderr,
            ) as bar:
                return await importer.run(
                    read_rows(file, file_format),
                    dataset=str(file),
                    rejected_path=rejected_path,
                    progress=bar.update,
                )
        finally:
            await log.close()

    try:
        summary = asyncio.run(run())
    finally:
        db.dispose()
    click.echo(
        f"{summary.rows} rows: {summary.accepted} accepted, {summary.duplicates} duplicates, "
        f"{summary.rejected} rejected"
    )
    for code, count in sorted(summary.reasons.items()):
        click.echo(f"  rejected {count} x {code}")
    if summary.rejected_file is not None:
        click.echo(f"rejected rows with reasons: {summary.rejected_file}")
    if summary.quality is not None and summary.quality.status != "passed":
        click.echo(summary.quality.report())


# -- sql -------------------------------------------------------------------------------------


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

    settings = _settings()
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


# -- quality and lineage ---------------------------------------------------------------------


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

    db = open_database(_settings())
    try:
        runs = QualityRepository(db).latest(stage)
    finally:
        db.dispose()
    if as_json:
        _echo_json([r.to_dict() for r in runs])
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

    settings = _settings()
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

    db = open_database(_settings())
    try:
        record = LineageRepository(db).get(lineage_id)
    finally:
        db.dispose()
    _echo_json(record.to_dict())


@lineage.command("list")
@click.option("--kind", default=None, help="feature_table, training_frame, ...")
@click.option("-n", "--limit", default=20, show_default=True)
def lineage_list(kind: str | None, limit: int) -> None:
    """List the newest lineage records."""
    from personify.quality.lineage import LineageRepository
    from personify.store.database import open_database

    db = open_database(_settings())
    try:
        records = LineageRepository(db).list(kind, limit=limit)
    finally:
        db.dispose()
    for r in records:
        versions = ",".join(f"{k}@{v}" for k, v in r.lake_versions.items())
        click.echo(
            f"{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {r.kind:<16} {versions}  {r.output or ''}"
        )


COMMANDS: tuple[click.Command, ...] = (lake, import_events, sql, quality, lineage)
