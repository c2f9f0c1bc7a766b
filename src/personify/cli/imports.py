"""``personify import``: historical events from a file, through the collector's own steps."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from personify.cli.context import CliContext


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
@click.option(
    "--catalog",
    is_flag=True,
    help="FILE is an item catalog (.json export, .jsonl items, .csv products), not events",
)
@click.option("--publish", is_flag=True, help="with --catalog: publish items without a status")
def import_events(
    file: Path,
    source_name: str,
    fmt: str | None,
    rejected: Path | None,
    catalog: bool,
    publish: bool,
) -> None:
    """Import historical events from JSON lines, CSV or Parquet through the collector's checks,
    or with --catalog, content items and placements (docs/content.md)."""
    if catalog:
        from personify.cli.content import import_catalog_file

        import_catalog_file(CliContext.current(), file, publish=publish)
        return
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
    from personify.privacy.suppression import Suppressions
    from personify.quality.checks import QualityContext
    from personify.quality.results import QualityRepository
    from personify.store.database import open_database

    settings = CliContext.current().settings
    file_format: FileFormat = fmt if fmt is not None else detect_format(file)  # type: ignore[assignment]
    rejected_path = rejected or file.with_name(file.name + ".rejected.jsonl")
    db = open_database(settings)
    sources = SourceRepository(db)
    try:
        source = sources.get(source_name)
    except NotFound:
        source, _ = sources.create(source_name)
        click.echo(f"created source {source.name} ({source.id})", err=True)
    hasher = PiiHasher.from_settings(settings)
    normalizer = Normalizer(
        hasher,
        max_event_bytes=settings.max_event_bytes,
        future_tolerance_s=settings.future_tolerance_hours * 3600.0,
    )
    now = datetime.now(UTC)
    quality = QualityContext(now=now, future_tolerance_hours=settings.future_tolerance_hours)
    # erased people's ids are dropped here as the collector drops them
    suppressions = Suppressions(db, hasher)
    suppressions.refresh()

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
                suppressions=suppressions,
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
        + (f", {summary.suppressed} of erased people dropped" if summary.suppressed else "")
    )
    for code, count in sorted(summary.reasons.items()):
        click.echo(f"  rejected {count} x {code}")
    if summary.rejected_file is not None:
        click.echo(f"rejected rows with reasons: {summary.rejected_file}")
    if summary.quality is not None and summary.quality.status != "passed":
        click.echo(summary.quality.report())
