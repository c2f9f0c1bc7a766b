"""The audit log from the command line: ``personify audit list|verify|export``, and
``record_cli`` for commands that change things (docs/privacy.md)."""

from __future__ import annotations

import getpass
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from personify.cli.context import CliContext, echo_json, parse_moment, pass_ctx

if TYPE_CHECKING:
    from personify.auth.audit import AuditLog

__all__ = ["audit", "record_cli"]


def _audit_log(ctx: CliContext) -> AuditLog:
    from personify.auth.audit import AuditLog
    from personify.store.database import open_database

    return AuditLog(open_database(ctx.settings))


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    from personify.errors import ValidationError

    try:
        return parse_moment(value)
    except ValidationError as exc:
        raise click.BadParameter(exc.message) from exc


def _operator() -> str:
    try:
        return getpass.getuser()
    # no login name (a container without a passwd entry): the uid still says who
    except (KeyError, OSError):
        import os

        return f"uid:{os.getuid()}"


def record_cli(
    ctx: CliContext, command_path: str, exit_code: int, *, resource: str | None = None
) -> int | None:
    """Append the audit record of a CLI command that changed something; returns its id.

    ``command_path`` is the command as typed without options (``experiments start``); the
    action is ``cli <command_path>``, the resource ``resource`` (default: the command path),
    the actor the operating-system user, the source this host. The command has already run,
    so a record that cannot be written is reported on standard error, never raised (``None``).
    """
    from personify.auth.audit import AuditLog, AuditRecord
    from personify.errors import PersonifyError
    from personify.store.database import open_database

    db = open_database(ctx.settings)
    log = AuditLog(db)
    record = AuditRecord(
        at=log.clock.now(),
        actor_kind="cli",
        actor=_operator(),
        role=None,
        action=f"cli {command_path}",
        resource=resource or command_path,
        status=exit_code,
        outcome="ok" if exit_code == 0 else "failed",
        source=socket.gethostname(),
    )
    try:
        return log.append(record)
    except PersonifyError as error:
        click.echo(f"warning: the audit record was not written [{error.code}]: {error}", err=True)
        return None
    finally:
        db.dispose()


@click.group()
def audit() -> None:
    """The audit log: who changed or read what, when, from where (hash-chained)."""


@audit.command("list")
@click.option("--actor", default=None, help="only this actor's records (a key's id, a user)")
@click.option("--action", default=None, help="only this action, e.g. 'PATCH /v1/segments/{key}'")
@click.option("--resource", default=None, help="only resources starting with this path")
@click.option("--since", default=None, callback=_moment, help="from this time (ISO-8601)")
@click.option("--until", default=None, callback=_moment, help="before this time (ISO-8601)")
@click.option("--after", type=click.IntRange(min=0), default=0, help="after this record id")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=100, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@pass_ctx
def audit_list(
    ctx: CliContext,
    actor: str | None,
    action: str | None,
    resource: str | None,
    since: datetime | None,
    until: datetime | None,
    after: int,
    limit: int,
    fmt: str,
) -> None:
    """List audit records, oldest first."""
    found = _audit_log(ctx).query(
        actor=actor,
        action=action,
        resource_prefix=resource,
        since=since,
        until=until,
        limit=limit,
        after_id=after,
    )
    if fmt == "json":
        echo_json([entry.to_document() for entry in found])
        return
    for entry in found:
        r = entry.record
        who = f"{r.actor_kind}:{r.actor}" + (f" ({r.role})" if r.role else "")
        click.echo(
            f"{entry.id:>6}  {r.at:%Y-%m-%d %H:%M:%S}  {r.outcome:<6} {r.status:>3}  "
            f"{who}  {r.action}  {r.resource}  {r.source or '-'}"
        )
    if len(found) == limit:
        click.echo(f"… more after --after {found[-1].id}", err=True)


@audit.command("verify")
@pass_ctx
def audit_verify(ctx: CliContext) -> None:
    """Check the whole chain: exit 1 and name the first removed or altered record."""
    report = _audit_log(ctx).verify()
    if report.ok:
        head = f"head {report.head_id} {report.head_hash}" if report.head_id else "empty"
        click.echo(f"ok: {report.records} records, chain intact ({head})")
        return
    click.echo(
        f"BROKEN at record {report.broken_id}: {report.reason}: {report.message} "
        f"({report.records} records intact before it)"
    )
    sys.exit(1)


@audit.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write to this file (default: standard output)",
)
@click.option("--actor", default=None, help="only this actor's records")
@click.option("--since", default=None, callback=_moment, help="from this time (ISO-8601)")
@click.option("--until", default=None, callback=_moment, help="before this time (ISO-8601)")
@pass_ctx
def audit_export(
    ctx: CliContext,
    output: Path | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
) -> None:
    """Write audit records as JSON lines, oldest first, with their hashes."""
    lines = _audit_log(ctx).export(actor=actor, since=since, until=until)
    if output is None:
        for line in lines:
            # bytes go to the binary stream as they are
            click.echo(line, nl=False)
        return
    count = 0
    with output.open("wb") as file:
        for line in lines:
            file.write(line)
            count += 1
    click.echo(f"exported {count} records to {output}", err=True)
