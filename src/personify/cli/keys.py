"""Sources and their write keys; API keys: ``personify sources …``, ``personify keys …``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from personify.cli.context import CliContext, pass_ctx

if TYPE_CHECKING:
    from datetime import timedelta

    from personify.auth.keys import ApiKeyRepository
    from personify.ingest.sources import SourceRepository
    from personify.ingest.webhooks import InboundWebhook, InboundWebhookRepository


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


@sources.command("webhook")
@click.argument("source")
@click.option(
    "--mapping",
    default="stripe",
    show_default=True,
    help="a built-in mapping (stripe), or a JSON mapping: @FILE, - for standard input, or "
    'the JSON itself (docs/webhooks.md, "Webhooks in")',
)
@pass_ctx
def sources_webhook(ctx: CliContext, source: str, mapping: str) -> None:
    """Let SOURCE take signed webhooks; prints the secret to give the sender (shown once).

    On a source that takes them already, only the mapping changes."""
    from personify.cli.context import read_json
    from personify.errors import InvalidDefinition
    from personify.ingest.mappings import BUILTIN_MAPPINGS, WebhookMapping, parse_mapping

    chosen: WebhookMapping | str = mapping
    if mapping not in BUILTIN_MAPPINGS:
        try:
            chosen = parse_mapping(read_json(mapping))
        except InvalidDefinition as error:
            lines = [f"  {p['pointer']}: {p['message']}" for p in error.details["problems"]]
            raise click.ClickException("\n".join(["the mapping is invalid:", *lines])) from error
    webhook, secret = _webhooks(ctx).enable(source, chosen)
    _echo_webhook(webhook)
    if secret is not None:
        click.echo(f"secret: {secret}")
    else:
        click.echo("mapping changed; the secrets are unchanged")


@sources.command("webhook-rotate")
@click.argument("source")
@pass_ctx
def sources_webhook_rotate(ctx: CliContext, source: str) -> None:
    """Add a new webhook secret to SOURCE and print it (shown once); the older ones go on
    verifying until webhook-retire."""
    webhook, secret = _webhooks(ctx).rotate(source)
    _echo_webhook(webhook)
    click.echo(f"secret: {secret}")


@sources.command("webhook-retire")
@click.argument("source")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="retire the secrets made longer ago than this: 90s, 30m, 12h, 7d, 2w (never the "
    "newest secret)",
)
@pass_ctx
def sources_webhook_retire(ctx: CliContext, source: str, older_than: str) -> None:
    """Retire SOURCE's webhook secrets older than a duration; signatures made with them
    fail from then on."""
    webhook, removed = _webhooks(ctx).retire(source, parse_duration(older_than))
    click.echo(f"retired {len(removed)} secret(s): {', '.join(str(s.id) for s in removed)}")
    _echo_webhook(webhook)


_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# ten years: longer is a typo, and a bound keeps timedelta from overflowing
_MAX_DURATION_S = 10 * 365 * 86_400


def parse_duration(text: str) -> timedelta:
    """A duration from the command line: a whole number and a unit (s, m, h, d, w)."""
    from datetime import timedelta

    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    scale = _DURATION_UNITS_S.get(unit)
    if scale is None or not (number.isascii() and number.isdigit()) or len(number) > 12:
        raise click.BadParameter(f"{text!r} is no duration: use 90s, 30m, 12h, 7d or 2w")
    seconds = int(number) * scale
    if seconds > _MAX_DURATION_S:
        raise click.BadParameter(f"{text!r} is longer than ten years")
    return timedelta(seconds=seconds)


def _webhooks(ctx: CliContext) -> InboundWebhookRepository:
    from personify.ingest.webhooks import InboundWebhookRepository
    from personify.store.database import open_database

    return InboundWebhookRepository(
        open_database(ctx.settings), tolerance_s=ctx.settings.webhooks_in_tolerance_s
    )


def _echo_webhook(webhook: InboundWebhook) -> None:
    click.echo(f"source {webhook.source_name} ({webhook.source_id}) takes signed webhooks")
    click.echo(f"  POST {webhook.path}   mapping: {webhook.mapping.name}")
    made = ", ".join(f"#{s.id} {s.created_at:%Y-%m-%d %H:%M}" for s in webhook.secrets)
    click.echo(f"  secrets: {made}")


# -- keys ------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """API keys for the admin endpoints."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["owner", "admin", "editor", "analyst", "viewer", "service", "read"]),
    default="admin",
    show_default=True,
    help="what the key may do (docs/security.md); read is the old name of analyst",
)
@click.option("--expires-in", default=None, help="the key stops working after this: 90d, 12h…")
@pass_ctx
def keys_create(ctx: CliContext, name: str, role: str, expires_in: str | None) -> None:
    """Create an API key and print it (shown only once; stored hashed)."""
    from datetime import UTC, datetime

    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
    key, secret = _api_keys(ctx).create(name, role, expires_at=expires_at)
    until = f", expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
    click.echo(f"key {key.name} ({key.id}, role {key.role}{until})")
    click.echo(f"api key: {secret}")


@keys.command("list")
@pass_ctx
def keys_list(ctx: CliContext) -> None:
    """List API keys (never their secrets): role, state, expiry, last use."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for k in _api_keys(ctx).list():
        state = "revoked" if not k.is_active else "expired" if k.has_expired(now) else "active"
        expires = f"expires {k.expires_at:%Y-%m-%d}" if k.expires_at else "no expiry"
        used = f"used {k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never used"
        click.echo(f"{k.id}  {k.name:<24} {k.role:<8} {k.prefix}…  {state}  {expires}  {used}")


@keys.command("rotate")
@click.argument("key")
@click.option(
    "--overlap",
    default="24h",
    show_default=True,
    help="how long the old secret keeps working (0s: not at all)",
)
@pass_ctx
def keys_rotate(ctx: CliContext, key: str, overlap: str) -> None:
    """Give a key a new secret and print it (shown once); the old one works for --overlap."""
    rotated, secret = _api_keys(ctx).rotate(key, overlap=parse_duration(overlap))
    until = rotated.previous_expires_at
    click.echo(
        f"rotated key {rotated.name} ({rotated.id}); the old secret works until {until:%Y-%m-%d %H:%M} UTC"
    )
    click.echo(f"api key: {secret}")


@keys.command("revoke")
@click.argument("key")
@pass_ctx
def keys_revoke(ctx: CliContext, key: str) -> None:
    """Revoke an API key by id or name."""
    revoked = _api_keys(ctx).revoke(key)
    click.echo(f"revoked key {revoked.name} ({revoked.id})")
