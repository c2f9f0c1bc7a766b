"""Data subject rights from the command line: ``personify privacy erase|status|export|
unsuppress|check`` (docs/privacy.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from personify.cli.audit import record_cli
from personify.cli.context import CliContext, echo_json, pass_ctx

if TYPE_CHECKING:
    from personify.runtime import Runtime

__all__ = ["privacy"]

_T = TypeVar("_T")


def _with_runtime(ctx: CliContext, work: Callable[[Runtime], Awaitable[_T]]) -> _T:
    """Build the runtime, start the ports erasers use (the cache, the log), run ``work``."""
    from personify.runtime import Runtime

    async def run() -> _T:
        runtime = Runtime.build(ctx.settings)
        await runtime.cache.start()
        await runtime.log.start()
        try:
            return await work(runtime)
        finally:
            await runtime.log.close()
            await runtime.cache.close()
            runtime.db.dispose()

    return asyncio.run(run())


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """``function`` in a thread, with the erasers' async ports on this loop."""
    from personify.privacy.erasure import JOB_LOOP

    JOB_LOOP.set(asyncio.get_running_loop())
    return await asyncio.to_thread(function, *args)


@click.group()
def privacy() -> None:
    """Erase, export and un-suppress the data of a person (a data subject)."""


@privacy.command("erase")
@click.argument("identity", metavar="ID")
@click.option("--wait", is_flag=True, help="run the erasure now and wait for it to finish")
@pass_ctx
def privacy_erase(ctx: CliContext, identity: str, wait: bool) -> None:
    """Erase the person behind ID (any of their ids) everywhere; their ids are suppressed
    from now on. Without --wait, the running server's job carries it out."""

    async def work(runtime: Runtime) -> dict[str, Any]:
        request = await _in_thread(runtime.privacy.submit, identity)
        if wait:
            request = await _in_thread(runtime.privacy.run_now, request.id)
        return request.to_dict()

    answer = _with_runtime(ctx, work)
    # the record names the request, never the id in clear
    code = 0 if not wait or answer["status"] == "done" else 1
    record_cli(ctx, "privacy erase", code, resource=f"privacy/requests/{answer['requestId']}")
    echo_json(answer)
    sys.exit(code)


@privacy.command("status")
@click.argument("request_id", metavar="REQUEST")
@pass_ctx
def privacy_status(ctx: CliContext, request_id: str) -> None:
    """Show an erasure or export request: its status and each eraser's step."""
    from personify.privacy.erasure import ErasureRequests
    from personify.runtime import Runtime

    runtime = Runtime.build(ctx.settings)
    try:
        requests: ErasureRequests = runtime.privacy.requests
        echo_json(requests.get(request_id).to_dict())
    finally:
        runtime.db.dispose()


@privacy.command("export")
@click.argument("identity", metavar="ID")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the JSON document here (default: standard output)",
)
@pass_ctx
def privacy_export(ctx: CliContext, identity: str, output: Path | None) -> None:
    """Everything held about the person behind ID, as one JSON document."""
    import msgspec

    async def work(runtime: Runtime) -> dict[str, Any]:
        document = await _in_thread(runtime.exporter.export, identity)
        request = await _in_thread(runtime.privacy.requests.record_export, identity)
        return {"requestId": request.id, **document}

    document = _with_runtime(ctx, work)
    record_cli(ctx, "privacy export", 0, resource=f"privacy/requests/{document['requestId']}")
    if output is None:
        echo_json(document)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2))
    click.echo(f"wrote {output}")


@privacy.command("unsuppress")
@click.argument("identity", metavar="ID")
@pass_ctx
def privacy_unsuppress(ctx: CliContext, identity: str) -> None:
    """Accept the events of an erased ID again."""
    from personify.privacy.suppression import Suppressions
    from personify.runtime import Runtime

    runtime = Runtime.build(ctx.settings)
    try:
        suppressions: Suppressions = runtime.suppressions
        removed = suppressions.unsuppress(identity)
    finally:
        runtime.db.dispose()
    record_cli(ctx, "privacy unsuppress", 0 if removed else 1, resource="privacy/suppressions")
    if not removed:
        click.echo("that id is not suppressed", err=True)
        sys.exit(1)
    click.echo("unsuppressed: its events are accepted again")


@privacy.command("check")
@click.argument("identity", metavar="ID")
@pass_ctx
def privacy_check(ctx: CliContext, identity: str) -> None:
    """Search every store for anything of the person behind ID; exit 1 if anything remains."""

    async def work(runtime: Runtime) -> dict[str, list[str]]:
        subject = await _in_thread(runtime.privacy.resolve, identity)
        return await runtime.privacy.find_async(subject)

    found = _with_runtime(ctx, work)
    remaining = [place for places in found.values() for place in places]
    for place in remaining:
        click.echo(place)
    if remaining:
        click.echo(f"{len(remaining)} places still hold something of this person", err=True)
        sys.exit(1)
    click.echo(f"nothing remains in {', '.join(found)}")


@privacy.command("pii-keys")
@pass_ctx
def privacy_pii_keys(ctx: CliContext) -> None:
    """List the PII keyring: the active key's id, then the retired keys' (never the keys)."""
    from personify.events.hashing import PiiHasher

    ids = PiiHasher.from_settings(ctx.settings).key_ids
    click.echo(f"active  {ids[0]}")
    for retired in ids[1:]:
        click.echo(f"retired {retired}")


@privacy.command("rotate-pii-key")
@pass_ctx
def privacy_rotate_pii_key(ctx: CliContext) -> None:
    """Hash new PII with a new key; the old key joins the retired keys, which lookups still
    try (suppression, erasure, privacy requests). Restart every process afterwards.

    This rotates the embedded default's key file; where PERSONIFY_PII_HASH_KEY is set, set
    it to a new key and add the old one to PERSONIFY_PII_HASH_RETIRED_KEYS instead."""
    import secrets

    from personify.events.hashing import key_id

    settings = ctx.settings
    if settings.pii_hash_key:
        click.echo(
            "PERSONIFY_PII_HASH_KEY is set in the environment: set it to a new key and put the "
            "old one first in PERSONIFY_PII_HASH_RETIRED_KEYS (comma-separated), then restart",
            err=True,
        )
        sys.exit(2)
    old = settings.resolved_pii_hash_key()
    new = secrets.token_hex(32)
    retired = settings.pii_hash_retired_file
    lines = retired.read_text().splitlines() if retired.exists() else []
    # the retired file first, so that no moment holds a key nowhere on disk
    retired.write_text("\n".join([old.decode(), *lines]) + "\n")
    retired.chmod(0o600)
    key_file = settings.pii_hash_key_file
    staged = key_file.with_suffix(".new")
    staged.write_text(new)
    staged.chmod(0o600)
    staged.replace(key_file)
    record_cli(ctx, "privacy rotate-pii-key", 0, resource="privacy/pii-keys")
    click.echo(f"active  {key_id(new.encode())}")
    click.echo(f"retired {key_id(old)}")
    click.echo("restart every Personify process to hash with the new key")
