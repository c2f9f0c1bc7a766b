"""``personify lake …``: the lake writer, compaction, point-in-time features and training frames."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
import msgspec

from personify.cli.context import CliContext, echo_json, parse_moment
from personify.errors import ValidationError


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

    settings = CliContext.current().settings

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

    settings = CliContext.current().settings
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

    lake_ = Lake.from_settings(CliContext.current().settings)
    if not lake_.exists():
        click.echo(f"{lake_.uri}: no table yet")
        return
    table = lake_.open()
    offsets = next((h[METADATA_OFFSETS] for h in lake_.history(200) if METADATA_OFFSETS in h), None)
    echo_json(
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
    """Write every user's feature vector as of T (point in time) to a Parquet file, with the
    served churn and lifetime-value models' predictions from those features."""
    from personify.predict.trainer import ModelTrainer

    trainer = ModelTrainer.from_settings(CliContext.current().settings)
    result = trainer.feature_table(parse_moment(as_of), output=output)
    click.echo(f"{result.row_count} users -> {output} (lineage {result.lineage_id})")


@lake.command("training-frame")
@click.option("--as-of", "as_of", required=True, help="the cut-off time T (ISO-8601)")
@click.option("--label", type=click.Choice(["churn", "clv"]), required=True)
@click.option("--horizon-days", type=float, default=None, help="30 for churn, 90 for clv")
@click.option(
    "--event",
    default=None,
    help="churn: the qualifying event (default any); clv: the order event (Order Completed)",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def lake_training_frame(
    as_of: str, label: str, horizon_days: float | None, event: str | None, output: Path
) -> None:
    """Write features as of T plus a label from (T, T + horizon] to a Parquet file."""
    from personify.predict.training import FeatureJob

    job = FeatureJob.from_settings(CliContext.current().settings)
    result = job.training_frame(
        parse_moment(as_of), label=label, horizon_days=horizon_days, event=event, output=output
    )
    click.echo(f"{result.row_count} rows -> {output} (lineage {result.lineage_id})")
