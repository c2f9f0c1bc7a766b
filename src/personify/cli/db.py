"""``personify db upgrade``: the state database's migrations."""

from __future__ import annotations

import click

from personify.cli.context import CliContext, pass_ctx


@click.group()
def db() -> None:
    """The state database."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: CliContext) -> None:
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
