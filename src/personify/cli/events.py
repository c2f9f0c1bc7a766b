"""The event log from the command line: ``personify events tail``, ``replay-failed``, ``trim``."""

from __future__ import annotations

import asyncio

import click

from personify.cli.context import CliContext, echo_json, pass_ctx


@click.group()
def events() -> None:
    """Look at the event log."""


@events.command("tail")
@click.option("-n", "--lines", default=20, show_default=True, help="how many of the newest events")
@click.option("-f", "--follow", is_flag=True, help="keep printing new events")
@pass_ctx
def events_tail(ctx: CliContext, lines: int, follow: bool) -> None:
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


@events.command("replay-failed")
@click.option("--id", "ids", multiple=True, type=int, help="only this dead letter (repeatable)")
@click.option("--limit", default=1000, show_default=True, help="at most this many")
@pass_ctx
def events_replay_failed(ctx: CliContext, ids: tuple[int, ...], limit: int) -> None:
    """Re-append the stream worker's dead letters to the log (they keep their messageId)."""
    from personify.eventlog.base import open_eventlog
    from personify.store.database import open_database
    from personify.store.failed_events import FailedEventRepository
    from personify.worker.replay import ReplayOutcome, replay_failed

    async def run() -> ReplayOutcome:
        log = open_eventlog(ctx.settings)
        await log.start()
        try:
            failed = FailedEventRepository(open_database(ctx.settings))
            return await replay_failed(log, failed, ids=ids, limit=limit)
        finally:
            await log.close()

    outcome = asyncio.run(run())
    click.echo(f"replayed {len(outcome.replayed)} dead letters: {outcome.replayed}")
    if outcome.skipped:
        click.echo(
            f"not replayed (unknown, not from the worker, or already replayed): {outcome.skipped}"
        )


@events.command("trim")
@pass_ctx
def events_trim(ctx: CliContext) -> None:
    """Remove the log records every consumer group has committed and that are older than
    PERSONIFY_EVENTLOG_RETENTION_HOURS, once; print what went."""
    from personify.eventlog.base import open_eventlog
    from personify.jobs.retention import LogTrimmer

    async def run() -> dict[str, object]:
        log = open_eventlog(ctx.settings)
        await log.start()
        try:
            trimmer = LogTrimmer(log, retention_hours=ctx.settings.eventlog_retention_hours)
            return (await trimmer.trim()).to_dict()
        finally:
            await log.close()

    echo_json(asyncio.run(run()))
