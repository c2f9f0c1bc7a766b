"""``personify webhooks …``: the URLs told when content is published or unpublished. Create
one (its secret is printed once), list them, read a webhook's delivery log, delete one,
retry a failed delivery, and send the due deliveries now (docs/webhooks.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from personify.cli.context import CliContext, echo_json, pass_ctx

if TYPE_CHECKING:
    from personify.store.database import Database

_EVENTS = ("content.published", "content.unpublished")
_STATUSES = ("pending", "delivered", "failed")


@contextmanager
def _database(ctx: CliContext) -> Iterator[Database]:
    """The state database for one command, closed when it is done."""
    from personify.store.database import open_database

    db = open_database(ctx.settings)
    try:
        yield db
    finally:
        db.dispose()


@click.group()
def webhooks() -> None:
    """Webhooks told when content is published or unpublished: create, list, deliveries,
    delete, retry, deliver."""


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(_EVENTS),
    help="an event it is told of (repeat it; every event when absent)",
)
@pass_ctx
def webhooks_create(ctx: CliContext, url: str, events: tuple[str, ...]) -> None:
    """Create a webhook POSTing to URL. Prints it as JSON with its signing secret, which is
    shown this once: give it to the receiver."""
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        webhook, secret = WebhookRepository(db).create(url, events or None)
    echo_json({**webhook.to_dict(), "secret": secret})


@webhooks.command("list")
@click.option("--all", "everything", is_flag=True, help="include deleted webhooks")
@pass_ctx
def webhooks_list(ctx: CliContext, everything: bool) -> None:
    """Print the webhooks as JSON (never their secrets)."""
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        found = WebhookRepository(db).list(include_inactive=everything)
    echo_json([webhook.to_dict() for webhook in found])


@webhooks.command("deliveries")
@click.argument("webhook_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--before", type=click.IntRange(min=1), default=None, help="ids below (paging)")
@click.option("--status", type=click.Choice(_STATUSES), default=None)
@pass_ctx
def webhooks_deliveries(
    ctx: CliContext, webhook_id: int, limit: int, before: int | None, status: str | None
) -> None:
    """Print the webhook's delivery log, newest first, as JSON (``next`` pages on with
    --before)."""
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        page = WebhookRepository(db).deliveries(
            webhook_id, limit=limit, before=before, status=status
        )
    echo_json({"data": [d.to_dict() for d in page.deliveries], "next": page.next})


@webhooks.command("delete")
@click.argument("webhook_id", metavar="ID", type=click.IntRange(min=1))
@pass_ctx
def webhooks_delete(ctx: CliContext, webhook_id: int) -> None:
    """Deactivate a webhook: nothing more is sent to it, its pending deliveries are failed
    unsent, and its delivery log is kept."""
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        echo_json(WebhookRepository(db).delete(webhook_id).to_dict())


@webhooks.command("rotate")
@click.argument("webhook_id", metavar="WEBHOOK", type=click.IntRange(min=1))
@click.option(
    "--overlap",
    default="24h",
    show_default=True,
    help="how long deliveries are signed with the previous secret too (90s, 30m, 12h, 7d)",
)
@pass_ctx
def webhooks_rotate(ctx: CliContext, webhook_id: int, overlap: str) -> None:
    """Give a webhook a new signing secret. Prints it as JSON with the secret, shown this
    once; until --overlap has passed its deliveries are signed with the old secret too."""
    from personify.cli.keys import parse_duration
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        webhook, secret = WebhookRepository(db).rotate(webhook_id, overlap=parse_duration(overlap))
    echo_json({**webhook.to_dict(), "secret": secret})


@webhooks.command("retry")
@click.argument("delivery_id", metavar="DELIVERY", type=click.IntRange(min=1))
@pass_ctx
def webhooks_retry(ctx: CliContext, delivery_id: int) -> None:
    """Make a failed delivery pending again: the next pass (or `deliver`) tries it once more."""
    from personify.content.webhooks import WebhookRepository

    with _database(ctx) as db:
        echo_json(WebhookRepository(db).retry(delivery_id).to_dict())


@webhooks.command("deliver")
@pass_ctx
def webhooks_deliver(ctx: CliContext) -> None:
    """Send the deliveries that are due now, once (what `personify serve` does every
    PERSONIFY_CONTENT_WEBHOOK_INTERVAL_S; for cron beside API nodes that run no jobs)."""
    from personify.content.webhooks import WebhookDeliverer

    settings = ctx.settings
    with _database(ctx) as db:
        deliverer = WebhookDeliverer(
            db,
            timeout_s=settings.content_webhook_timeout_s,
            max_attempts=settings.content_webhook_max_attempts,
        )
        echo_json(deliverer.deliver_due())
