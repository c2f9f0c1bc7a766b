"""``personify``: the root command, ``serve``, ``worker`` and ``demo``; every domain's commands
(sources and keys, events, profiles, segments, db, lake, import, sql, quality, lineage) live in
their own modules and are added here."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from personify.cli.audit import audit
from personify.cli.content import content
from personify.cli.context import CliContext, PersonifyGroup, echo_json, pass_ctx
from personify.cli.db import db
from personify.cli.decide import decide
from personify.cli.events import events
from personify.cli.experiments import experiments
from personify.cli.imports import import_events
from personify.cli.keys import keys, sources
from personify.cli.lake import lake
from personify.cli.predict import predict
from personify.cli.privacy import privacy
from personify.cli.profiles import profiles
from personify.cli.quality import lineage, quality
from personify.cli.recommend import recommend
from personify.cli.segments import segments
from personify.cli.sql import sql
from personify.cli.webhooks import webhooks
from personify.settings import Settings


@click.group(cls=PersonifyGroup)
@click.version_option(package_name="personify")
def main() -> None:
    """Personify: real-time personalization, self-hosted."""


@main.command()
@click.option("--host", default=None, help="bind address (PERSONIFY_HOST)")
@click.option("--port", default=None, type=int, help="port (PERSONIFY_PORT)")
@click.option("--workers", default=1, show_default=True, help="API processes")
@click.option("--no-worker", is_flag=True, help="do not run a stream worker in this process")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
    default=None,
    help="log level (PERSONIFY_LOG_LEVEL, default info)",
)
@pass_ctx
def serve(
    ctx: CliContext,
    host: str | None,
    port: int | None,
    workers: int,
    no_worker: bool,
    log_level: str,
) -> None:
    """Run the HTTP API (and, unless --no-worker, a stream worker) with uvicorn.

    With --workers N > 1 on the embedded SQLite log, add --no-worker and run one
    `personify worker` beside it: the SQLite log has a single partition.
    """
    import os

    import uvicorn

    from personify.cli.logs import configure_logging
    from personify.cli.multiprocess import prepare_multiprocess_metrics

    settings = ctx.settings
    if no_worker:
        # the app factory runs in each uvicorn process and reads its settings from the environment
        os.environ["PERSONIFY_RUN_WORKER"] = "false"
    if log_level:
        os.environ["PERSONIFY_LOG_LEVEL"] = log_level.lower()
        settings = settings.model_copy(update={"log_level": log_level.lower()})
    # this process (uvicorn's supervisor with --workers N) logs as each served one does
    configure_logging(settings)
    # with --workers N, every process's metrics go to files one scrape sums (docs/observability.md)
    prepare_multiprocess_metrics(workers)
    uvicorn.run(
        "personify.cli.main:served_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level,
        # our handler and format (personify.cli.logs), and our access log (one line per
        # request with its route template and request id, personify.api.access_log)
        log_config=None,
        access_log=False,
        # httptools with a bound on request heads: 431 past 64 KB, 408 when a head takes
        # over 10 s (uvicorn bounds neither; see personify.cli.protocol)
        http="personify.cli.protocol:BoundedHttpProtocol",
        # idle keep-alive connections close after 5 s (uvicorn's default, said out loud)
        timeout_keep_alive=5,
        # open connections and requests in flight, under the file descriptors the process
        # may open: past it uvicorn answers 503 at once instead of failing to accept. Slow
        # clients count too, which the head timeout keeps from piling up
        limit_concurrency=max_connections(),
    )


def max_connections() -> int:
    """``personify serve``'s bound on open connections: the descriptor limit less a margin
    for the databases, the event log and the lake, at most 10,000."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(64, min(10_000, soft - 256))


def served_app() -> Any:
    """The app ``personify serve`` runs; uvicorn calls this in each of its processes.

    Unlike ``create_app`` alone, it tunes the process it runs in (unless
    ``PERSONIFY_PROCESS_TUNING=false``): the process is a server and nothing else. It
    also configures the process's logging and logs every request (``AccessLog``).
    """
    from personify.api.access_log import logged
    from personify.cli.logs import configure_logging
    from personify.cli.tuning import freeze_startup_objects, quiet_openmp, tune_process

    settings = Settings()
    configure_logging(settings)
    if settings.process_tuning:
        # before the app's imports load LightGBM's OpenMP runtime
        quiet_openmp()
    from personify.api.app import create_app

    app = logged(create_app(settings))
    if settings.process_tuning:
        tune_process()
        freeze_startup_objects()
    return app


# -- the stream worker --------------------------------------------------------------


@main.command()
@click.option("--drain", is_flag=True, help="exit once the consumer group has no lag")
@click.option(
    "--batch-size", type=int, default=None, help="entries per read (PERSONIFY_WORKER_BATCH_SIZE)"
)
@pass_ctx
def worker(ctx: CliContext, drain: bool, batch_size: int | None) -> None:
    """Run a stream worker: apply the event log to profiles until SIGTERM or Ctrl+C."""

    from personify.cli.logs import configure_logging
    from personify.cli.tuning import freeze_startup_objects, quiet_openmp, tune_process

    configure_logging(ctx.settings)
    if ctx.settings.process_tuning:
        # before the runtime's imports load LightGBM's OpenMP runtime
        quiet_openmp()
    from personify.runtime import Runtime
    from personify.worker.worker import WorkerStats

    update: dict[str, Any] = {"run_worker": False}
    if batch_size:
        update["worker_batch_size"] = batch_size
    settings = ctx.settings.model_copy(update=update)

    async def run() -> WorkerStats:
        services = Runtime.build(settings)
        await services.start()
        if settings.process_tuning:
            tune_process()
            freeze_startup_objects()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, services.worker.request_stop)
        # this process serves no API: its metrics get their own port (docs/observability.md)
        exposed = None
        if settings.worker_metrics_port:
            from personify.api.metrics import WorkerMetricsServer

            exposed = WorkerMetricsServer(services, settings.host, settings.worker_metrics_port)
            await exposed.start()
        try:
            if not drain:
                services.start_lake_sink()
            await services.worker.run(until_idle=drain)
        finally:
            if exposed is not None:
                await exposed.stop()
            await services.close()
        return services.worker.stats

    stats = asyncio.run(run())
    click.echo(
        f"worker stopped: {stats.events_applied} applied, {stats.duplicates} duplicates skipped, "
        f"{stats.dead_lettered} dead-lettered, lag {stats.lag}"
    )


@main.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="seed and exit instead of serving")
@pass_ctx
def demo(ctx: CliContext, port: int, no_serve: bool) -> None:
    """Seed an embedded demo (source, admin key, scripted events) and serve it on PORT."""
    from personify.cli.tuning import quiet_openmp

    if ctx.settings.process_tuning:
        # the demo serves and trains models in one process: before LightGBM loads
        quiet_openmp()
    from personify.cli.demo import run_demo

    run_demo(ctx.settings, port=port, serve=not no_serve, echo=click.echo, echo_json=echo_json)


for _command in (
    sources,
    keys,
    events,
    profiles,
    segments,
    db,
    lake,
    predict,
    content,
    decide,
    experiments,
    recommend,
    webhooks,
    import_events,
    sql,
    quality,
    lineage,
    audit,
    privacy,
):
    main.add_command(_command)
