"""``personify profiles show``: a profile now or as it was."""

from __future__ import annotations

import asyncio

import click

from personify.cli.context import CliContext, echo_json, pass_ctx


@click.group()
def profiles() -> None:
    """User profiles."""


@profiles.command("show")
@click.argument("identity")
@click.option("--as-of", default=None, help="ISO-8601 time: the profile as it was then")
@pass_ctx
def profiles_show(ctx: CliContext, identity: str, as_of: str | None) -> None:
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
    echo_json(asyncio.run(service.get(identity, as_of=moment)))
