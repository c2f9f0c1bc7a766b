"""Sources and their write keys; API keys: ``personify sources …``, ``personify keys …``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from personify.cli.context import CliContext, pass_ctx

if TYPE_CHECKING:
    from personify.auth.keys import ApiKeyRepository
    from personify.ingest.sources import SourceRepository


def _sources(ctx: CliContext) -> SourceRepository:
    from personify.ingest.sources import SourceRepository
    from personify.store.database import open_database

    return SourceRepository(open_database(ctx.settings))


def _api_keys(ctx: CliContext) -> ApiKeyRepository:
    from personify.auth.keys import ApiKeyRepository
    from personify.store.database import open_database

    return ApiKeyRepository(open_database(ctx.settings))


# -- sources ---------------------------------------------------------------------------------


@click.group()
def sources() -> None:
    """Event sources and their write keys."""


@sources.command("create")
@click.argument("name")
@pass_ctx
def sources_create(ctx: CliContext, name: str) -> None:
    """Create a source and print its write key (shown only once)."""
    source, key = _sources(ctx).create(name)
    click.echo(f"source {source.name} ({source.id})")
    click.echo(f"write key: {key}")


@sources.command("list")
@pass_ctx
def sources_list(ctx: CliContext) -> None:
    """List sources."""
    for s in _sources(ctx).list():
        state = "active" if s.is_active else f"revoked {s.revoked_at:%Y-%m-%d %H:%M}"
        click.echo(f"{s.id}  {s.name:<24} {s.write_key_prefix}…  {state}")


@sources.command("revoke")
@click.argument("source")
@pass_ctx
def sources_revoke(ctx: CliContext, source: str) -> None:
    """Revoke a source's write key (by id or name)."""
    revoked = _sources(ctx).revoke(source)
    click.echo(f"revoked source {revoked.name} ({revoked.id})")


# -- keys ------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """API keys for the admin endpoints."""


@keys.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "read"]), default="admin", show_default=True)
@pass_ctx
def keys_create(ctx: CliContext, name: str, role: str) -> None:
    """Create an API key and print it (shown only once; stored hashed)."""
    key, secret = _api_keys(ctx).create(name, role)
    click.echo(f"key {key.name} ({key.id}, role {key.role})")
    click.echo(f"api key: {secret}")


@keys.command("list")
@pass_ctx
def keys_list(ctx: CliContext) -> None:
    """List API keys (never their secrets)."""
    for k in _api_keys(ctx).list():
        state = "active" if k.is_active else "revoked"
        click.echo(f"{k.id}  {k.name:<24} {k.role:<6} {k.prefix}…  {state}")


@keys.command("revoke")
@click.argument("key")
@pass_ctx
def keys_revoke(ctx: CliContext, key: str) -> None:
    """Revoke an API key by id or name."""
    revoked = _api_keys(ctx).revoke(key)
    click.echo(f"revoked key {revoked.name} ({revoked.id})")
