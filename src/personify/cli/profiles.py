"""``personify profiles show`` (a profile now or as it was), ``events`` (its timeline) and
``prune`` (the retention job, once)."""

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


@profiles.command("events")
@click.argument("identity")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", default=None, help="the `next` of the previous page")
@pass_ctx
def profiles_events(ctx: CliContext, identity: str, limit: int, cursor: str | None) -> None:
    """Print a page of IDENTITY's events, newest first, as the API's /events answers it
    (older than the state database keeps: from the lake)."""
    from personify.cache.memory import MemoryCache
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.runtime import profile_service
    from personify.store.database import open_database

    features = FeatureSet(load_profile_config(ctx.settings.features_file))
    service = profile_service(ctx.settings, open_database(ctx.settings), MemoryCache(), features)
    echo_json(asyncio.run(service.timeline(identity, cursor=cursor, limit=limit)))


@profiles.command("prune")
@pass_ctx
def profiles_prune(ctx: CliContext) -> None:
    """Delete timeline rows and compact versions past their retention, once; print what went.

    ``personify serve`` does this every PERSONIFY_PROFILE_PRUNE_INTERVAL_S; run it from cron
    where no server does (scaled out with --no-worker).
    """
    from personify.profiles.retention import ProfilePruner
    from personify.store.database import open_database

    pruner = ProfilePruner.from_settings(ctx.settings, open_database(ctx.settings))
    echo_json(pruner.prune().to_dict())
