"""``personify``: serve, manage sources and keys, look at events, run the demo."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import msgspec

from personify.errors import PersonifyError
from personify.settings import Settings


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
    """Run the HTTP API (and, unless --no-worker, a stream worker) with uvicorn."""
    import os

    import uvicorn

    settings = ctx.settings
    if no_worker:
        # the app factory runs in each uvicorn process and reads its settings from the environment
        os.environ["PERSONIFY_RUN_WORKER"] = "false"
    uvicorn.run(
        "personify.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


# -- sources ---------------------------------------------------------------------------------


@main.group()
def sources() -> None:
    """Event sources and their write keys."""


@sources.command("create")
@click.argument("name")
@pass_ctx
def sources_create(ctx: _Context, name: str) -> None:
    """Create a source and print its write key (shown only once)."""
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database

    source, key = SourceRepository(open_database(ctx.settings)).create(name)
    click.echo(f"source {source.name} ({source.id})")
    click.echo(f"write key: {key}")


@sources.command("list")
@pass_ctx
def sources_list(ctx: _Context) -> None:
    """List sources."""
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database

    for s in SourceRepository(open_database(ctx.settings)).list():
        state = "active" if s.is_active else f"revoked {s.revoked_at:%Y-%m-%d %H:%M}"
        click.echo(f"{s.id}  {s.name:<24} {s.write_key_prefix}…  {state}")


@sources.command("revoke")
@click.argument("source")
@pass_ctx
def sources_revoke(ctx: _Context, source: str) -> None:
    """Revoke a source's write key (by id or name)."""
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database

    revoked = SourceRepository(open_database(ctx.settings)).revoke(source)
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
    from personify.auth.keys import ApiKeyRepository
    from personify.store.database import open_database

    key, secret = ApiKeyRepository(open_database(ctx.settings)).create(name, role)
    click.echo(f"key {key.name} ({key.id}, role {key.role})")
    click.echo(f"api key: {secret}")


@keys.command("list")
@pass_ctx
def keys_list(ctx: _Context) -> None:
    """List API keys (never their secrets)."""
    from personify.auth.keys import ApiKeyRepository
    from personify.store.database import open_database

    for k in ApiKeyRepository(open_database(ctx.settings)).list():
        state = "active" if k.is_active else "revoked"
        click.echo(f"{k.id}  {k.name:<24} {k.role:<6} {k.prefix}…  {state}")


@keys.command("revoke")
@click.argument("key")
@pass_ctx
def keys_revoke(ctx: _Context, key: str) -> None:
    """Revoke an API key by id or name."""
    from personify.auth.keys import ApiKeyRepository
    from personify.store.database import open_database

    revoked = ApiKeyRepository(open_database(ctx.settings)).revoke(key)
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


@main.group()
def db() -> None:
    """The state database."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: _Context) -> None:
    """Apply pending schema migrations."""
    from personify.store.database import open_database

    database = open_database(ctx.settings, auto_upgrade=False)
    applied = database.upgrade()
    click.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


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
