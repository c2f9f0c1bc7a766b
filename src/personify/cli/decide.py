"""``personify decide``: preview what a user would be shown, with the trace of why
(docs/decide.md). A preview appends no exposure event."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from personify.cli.context import CliContext, echo_json, pass_ctx


@click.command("decide")
@click.argument("user")
@click.option(
    "--placement",
    "placements",
    multiple=True,
    required=True,
    help="a placement to fill (repeat for a page's several)",
)
@click.option("--anonymous", is_flag=True, help="USER is an anonymousId, not a userId")
@click.option("--locale", default=None, help="the visitor's locale (en, en-GB…)")
@click.option("--limit", type=click.IntRange(1, 50), default=None, help="items per placement")
@pass_ctx
def decide(
    ctx: CliContext,
    user: str,
    placements: tuple[str, ...],
    anonymous: bool,
    locale: str | None,
    limit: int | None,
) -> None:
    """Print the decision for USER in each --placement, with its trace (no exposure)."""
    from personify.decide.engine import DecisionRequest, PlacementRequest
    from personify.runtime import Runtime

    async def run() -> dict[str, Any]:
        runtime = Runtime.build(ctx.settings)
        await runtime.cache.start()
        try:
            request = DecisionRequest(
                placements=[PlacementRequest(p, limit) for p in placements],
                user_id=None if anonymous else user,
                anonymous_id=user if anonymous else None,
                context={"locale": locale} if locale else {},
            )
            return await runtime.decisions.decide(request, expose=False)
        finally:
            await runtime.cache.close()
            runtime.db.dispose()

    echo_json(asyncio.run(run()))
