"""``personify``: serve, manage sources and keys, look at events, run the demo."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import click
import msgspec

from personify.errors import PersonifyError
from personify.settings import Settings

if TYPE_CHECKING:
    from personify.auth.keys import ApiKeyRepository
    from personify.ingest.sources import SourceRepository


class _Context:
    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings()
        return self._settings


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


class PersonifyGroup(click.Group):
    """Turns a ``PersonifyError`` into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PersonifyError as error:
            click.echo(f"error [{error.code}]: {error.message}", err=True)
            sys.exit(1)


@click.group(cls=PersonifyGroup)
@click.version_option(package_name="personify")
def main() -> None:
    """Personify: real-time personalization, self-hosted."""


@main.command()
@click.option("--host", default=None, help="bind address (PERSONIFY_HOST)")
@click.option("--port", default=None, type=int, help="port (PERSONIFY_PORT)")
@click.option("--workers", default=1, show_default=True, help="API processes")
@click.option("--no-worker", is_flag=True, help="do not run a stream worker in this process")
@click.option("--log-level", default="info", show_default=True)
@pass_ctx
def serve(
    ctx: _Context, host: str | None, port: int | None, workers: int, no_worker: bool, log_level: str
) -> None:
    """Run the HTTP API (and, unless --no-worker, a stream worker) with uvicorn.

    With --workers N > 1 on the embedded SQLite log, add --no-worker and run one
    `personify worker` beside it: the SQLite log has a single partition.
    """
    import os

    import uvicorn

    settings = ctx.settings
    if no_worker:
        # the app factory runs in each uvicorn process and reads its settings from the environment
        os.environ["PERSONIFY_RUN_WORKER"] = "false"
    uvicorn.run(
        "personify.cli.main:served_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


def served_app() -> Any:
    """The app ``personify serve`` runs; uvicorn calls this in each of its processes.

    Unlike ``create_app`` alone, it tunes the process it runs in (unless
    ``PERSONIFY_PROCESS_TUNING=false``): the process is a server and nothing else.
    """
    from personify.api.app import create_app
    from personify.cli.tuning import freeze_startup_objects, tune_process

    settings = Settings()
    app = create_app(settings)
    if settings.process_tuning:
        tune_process()
        freeze_startup_objects()
    return app


def _sources(ctx: _Context) -> SourceRepository:
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database

    return SourceRepository(open_database(ctx.settings))


def _api_keys(ctx: _Context) -> ApiKeyRepository:
    from personify.auth.keys import ApiKeyRepository
    from personify.store.database import open_database

    return ApiKeyRepository(open_database(ctx.settings))


# -- sources ---------------------------------------------------------------------------------


@main.group()
def sources() -> None:
    """Event sources and their write keys."""


@sources.command("create")
@click.argument("name")
@pass_ctx
def sources_create(ctx: _Context, name: str) -> None:
    """Create a source and print its write key (shown only once)."""
    source, key = _sources(ctx).create(name)
    click.echo(f"source {source.name} ({source.id})")
    click.echo(f"write key: {key}")


@sources.command("list")
@pass_ctx
def sources_list(ctx: _Context) -> None:
    """List sources."""
    for s in _sources(ctx).list():
        state = "active" if s.is_active else f"revoked {s.revoked_at:%Y-%m-%d %H:%M}"
        click.echo(f"{s.id}  {s.name:<24} {s.write_key_prefix}…  {state}")


@sources.command("revoke")
@click.argument("source")
@pass_ctx
def sources_revoke(ctx: _Context, source: str) -> None:
    """Revoke a source's write key (by id or name)."""
    revoked = _sources(ctx).revoke(source)
    click.echo(f"revoked source {revoked.name} ({revoked.id})")


# -- keys ------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys for the admin endpoints."""


@keys.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "read"]), default="admin", show_default=True)
@pass_ctx
def keys_create(ctx: _Context, name: str, role: str) -> None:
    """Create an API key and print it (shown only once; stored hashed)."""
    key, secret = _api_keys(ctx).create(name, role)
    click.echo(f"key {key.name} ({key.id}, role {key.role})")
    click.echo(f"api key: {secret}")


@keys.command("list")
@pass_ctx
def keys_list(ctx: _Context) -> None:
    """List API keys (never their secrets)."""
    for k in _api_keys(ctx).list():
        state = "active" if k.is_active else "revoked"
        click.echo(f"{k.id}  {k.name:<24} {k.role:<6} {k.prefix}…  {state}")


@keys.command("revoke")
@click.argument("key")
@pass_ctx
def keys_revoke(ctx: _Context, key: str) -> None:
    """Revoke an API key by id or name."""
    revoked = _api_keys(ctx).revoke(key)
    click.echo(f"revoked key {revoked.name} ({revoked.id})")


# -- events ----------------------------------------------------------------------------------


@main.group()
def events() -> None:
    """Look at the event log."""


@events.command("tail")
@click.option("-n", "--lines", default=20, show_default=True, help="how many of the newest events")
@click.option("-f", "--follow", is_flag=True, help="keep printing new events")
@pass_ctx
def events_tail(ctx: _Context, lines: int, follow: bool) -> None:
    """Print the newest events, one JSON document per line."""
    from personify.eventlog.base import open_eventlog

    async def run() -> None:
        log = open_eventlog(ctx.settings)
        await log.start()
        try:
            seen: set[str] = set()
            while True:
                for entry in await log.tail(lines):
                    marker = f"{entry.partition}:{entry.offset}"
                    if marker in seen:
                        continue
                    seen.add(marker)
                    click.echo(entry.payload.decode())
                if not follow:
                    return
                await asyncio.sleep(0.5)
        finally:
            await log.close()

    asyncio.run(run())


@events.command("replay-failed")
@click.option("--id", "ids", multiple=True, type=int, help="only this dead letter (repeatable)")
@click.option("--limit", default=1000, show_default=True, help="at most this many")
@pass_ctx
def events_replay_failed(ctx: _Context, ids: tuple[int, ...], limit: int) -> None:
    """Re-append the stream worker's dead letters to the log (they keep their messageId)."""
    from personify.eventlog.base import open_eventlog
    from personify.store.database import open_database
    from personify.store.failed_events import FailedEventRepository
    from personify.worker.replay import ReplayOutcome, replay_failed

    async def run() -> ReplayOutcome:
        log = open_eventlog(ctx.settings)
        await log.start()
        try:
            failed = FailedEventRepository(open_database(ctx.settings))
            return await replay_failed(log, failed, ids=ids, limit=limit)
        finally:
            await log.close()

    outcome = asyncio.run(run())
    click.echo(f"replayed {len(outcome.replayed)} dead letters: {outcome.replayed}")
    if outcome.skipped:
        click.echo(
            f"not replayed (unknown, not from the worker, or already replayed): {outcome.skipped}"
        )


# -- stream worker and profiles --------------------------------------------------------------


@main.command()
@click.option("--drain", is_flag=True, help="exit once the consumer group has no lag")
@click.option(
    "--batch-size", type=int, default=None, help="entries per read (PERSONIFY_WORKER_BATCH_SIZE)"
)
@pass_ctx
def worker(ctx: _Context, drain: bool, batch_size: int | None) -> None:
    """Run a stream worker: apply the event log to profiles until SIGTERM or Ctrl+C."""
    import signal

    from personify.cli.tuning import freeze_startup_objects, tune_process
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
        try:
            if not drain:
                services.start_lake_sink()
            await services.worker.run(until_idle=drain)
        finally:
            await services.close()
        return services.worker.stats

    stats = asyncio.run(run())
    click.echo(
        f"worker stopped: {stats.events_applied} applied, {stats.duplicates} duplicates skipped, "
        f"{stats.dead_lettered} dead-lettered, lag {stats.lag}"
    )


@main.group()
def profiles() -> None:
    """User profiles."""


@profiles.command("show")
@click.argument("identity")
@click.option("--as-of", default=None, help="ISO-8601 time: the profile as it was then")
@pass_ctx
def profiles_show(ctx: _Context, identity: str, as_of: str | None) -> None:
    """Print the profile of IDENTITY (a userId, anonymousId or profile id) as JSON."""
    from personify.cache.memory import MemoryCache
    from personify.events.normalize import parse_timestamp
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.profiles.repository import ProfileRepository
    from personify.profiles.service import ProfileService
    from personify.store.database import open_database

    moment = parse_timestamp("--as-of", as_of) if as_of else None
    features = FeatureSet(load_profile_config(ctx.settings.features_file))
    service = ProfileService(
        ProfileRepository(open_database(ctx.settings), features), MemoryCache(), features
    )
    _echo_json(asyncio.run(service.get(identity, as_of=moment)))


@main.group()
def db() -> None:
    """The state database."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: _Context) -> None:
    """Run the pending schema migrations (Alembic) on the state database."""
    from personify.store.database import open_database
    from personify.store.migrations import head

    database = open_database(ctx.settings, auto_upgrade=False)
    try:
        applied = database.upgrade()
    finally:
        database.dispose()
    if applied:
        click.echo(f"applied migrations: {', '.join(applied)} (now at {head()})")
    else:
        click.echo(f"schema is up to date (at {head()})")


def _echo_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


@main.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="seed and exit instead of serving")
@pass_ctx
def demo(ctx: _Context, port: int, no_serve: bool) -> None:
    """Seed an embedded demo (source, admin key, scripted events) and serve it on PORT."""
    from personify.cli.demo import run_demo

    run_demo(ctx.settings, port=port, serve=not no_serve, echo=click.echo, echo_json=_echo_json)


# -- lake, import, sql, quality, lineage (personify.cli.lake) --------------------------------

from personify.cli.lake import COMMANDS as _LAKE_COMMANDS  # noqa: E402

for _command in _LAKE_COMMANDS:
    main.add_command(_command)
