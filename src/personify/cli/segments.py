"""``personify segments …``: rule segments from the command line (list, show, create, update,
delete), their current members (as JSON lines or a CSV file), their sizes, the backfill
and sweep passes that ``personify serve`` otherwise schedules, and clusterings: their
definitions (``personify segments clusterings …``), runs now (``recluster``) and rollbacks."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from personify.cli.context import CliContext, echo_json, pass_ctx
from personify.errors import PersonifyError

if TYPE_CHECKING:
    from personify.segments.clusterings import (
        ClusteringDefinition,
        ClusteringRepository,
        ClusteringRunner,
        RunOutcome,
    )
    from personify.segments.repository import Membership, SegmentRepository
    from personify.segments.stage import SegmentStage
    from personify.store.database import Database

# members read per query when printing or exporting a whole segment
_PAGE = 1000
CSV_COLUMNS = ("profile_id", "since", "segment_version")


def _open(ctx: CliContext) -> tuple[Database, SegmentRepository]:
    """The state database and the segments in it."""
    from personify.segments.repository import SegmentRepository
    from personify.store.database import open_database

    db = open_database(ctx.settings)
    return db, SegmentRepository(db)


def _repository(ctx: CliContext) -> SegmentRepository:
    return _open(ctx)[1]


def _condition(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """The ``--condition`` option: JSON text, or ``@path`` to read it from a file."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from exc
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc


def _condition_option(*, required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--condition",
        required=required,
        callback=_condition,
        help="the JSON condition, or @FILE holding it (docs/segments.md)",
    )


def _members(repository: SegmentRepository, key: str, limit: int | None) -> Iterator[Membership]:
    """The segment's current members by profile id, at most ``limit`` of them."""
    after: str | None = None
    left = limit
    while left is None or left > 0:
        size = _PAGE if left is None else min(_PAGE, left)
        page = repository.members(key, limit=size, after=after)
        yield from page.members
        if left is not None:
            left -= len(page.members)
        if page.next is None:
            return
        after = page.next


@click.group()
def segments() -> None:
    """Segments: rules and clusterings, their members and sizes."""


@segments.command("list")
@click.option("--archived", is_flag=True, help="include archived segments")
@pass_ctx
def segments_list(ctx: CliContext, archived: bool) -> None:
    """List segments: key, version, status, name."""
    found = _repository(ctx).definitions(include_archived=archived)
    # as wide as the longest key (a cluster's segment key is its clustering's and its own)
    width = max((len(d.key) for d in found), default=0)
    for d in found:
        click.echo(f"{d.key:<{width}}  v{d.version:<4} {d.status:<8} {d.name}")


@segments.command("show")
@click.argument("key")
@pass_ctx
def segments_show(ctx: CliContext, key: str) -> None:
    """Print segment KEY (its newest version) as JSON."""
    echo_json(_repository(ctx).get(key).to_dict())


@segments.command("create")
@click.argument("key")
@_condition_option(required=True)
@click.option("--name", default=None, help="a name for people (the key if not given)")
@click.option("--description", default="", help="what the segment is for")
@pass_ctx
def segments_create(
    ctx: CliContext, key: str, condition: Any, name: str | None, description: str
) -> None:
    """Save a new rule segment KEY and print it as JSON."""
    created = _repository(ctx).create(key, name=name, description=description, condition=condition)
    echo_json(created.to_dict())


@segments.command("update")
@click.argument("key")
@_condition_option(required=False)
@click.option("--name", default=None, help="a new name")
@click.option("--description", default=None, help="a new description")
@pass_ctx
def segments_update(
    ctx: CliContext, key: str, condition: Any, name: str | None, description: str | None
) -> None:
    """Save a new version of segment KEY with what is given and print it as JSON."""
    if condition is None and name is None and description is None:
        raise click.UsageError("give at least one of --condition, --name or --description")
    updated = _repository(ctx).update(key, name=name, description=description, condition=condition)
    echo_json(updated.to_dict())


@segments.command("delete")
@click.argument("key")
@pass_ctx
def segments_delete(ctx: CliContext, key: str) -> None:
    """Archive segment KEY (refused while another segment reads it) and print it as JSON."""
    echo_json(_repository(ctx).archive(key).to_dict())


@segments.command("members")
@click.argument("key")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="write a CSV file (profile_id,since,segment_version) instead of JSON lines",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most this many")
@pass_ctx
def segments_members(ctx: CliContext, key: str, output: Path | None, limit: int | None) -> None:
    """Print segment KEY's current members by profile id, one JSON object a line, or write
    them to a CSV file."""
    repository = _repository(ctx)
    # an unknown key is an error before any file is made
    repository.get(key)
    members = _members(repository, key, limit)
    if output is None:
        for member in members:
            line = {
                "profileId": member.profile_id,
                "since": member.entered_at.isoformat(),
                "segmentVersion": member.segment_version,
            }
            click.echo(msgspec.json.encode(line).decode())
        return
    count = 0
    with output.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for member in members:
            writer.writerow(
                (member.profile_id, member.entered_at.isoformat(), member.segment_version)
            )
            count += 1
    click.echo(f"wrote {count} members of {key} to {output}")


@segments.command("stats")
@click.argument("key")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True)
@pass_ctx
def segments_stats(ctx: CliContext, key: str, days: int) -> None:
    """Print segment KEY's size now, entries and exits, and its size at each day's end."""
    echo_json(_repository(ctx).stats(key, days=days))


def relay_events(ctx: CliContext, db: Database) -> int:
    """Append the membership events a pass left in the outbox to the event log."""
    import asyncio

    from personify.eventlog.base import open_eventlog
    from personify.segments.relay import MembershipRelay

    async def run() -> int:
        log = open_eventlog(ctx.settings)
        await log.start()
        try:
            return await MembershipRelay(db, log).flush()
        finally:
            await log.close()

    return asyncio.run(run())


def _stage(ctx: CliContext) -> tuple[Database, SegmentStage]:
    """The state database and the worker's segment stage over it (for the passes)."""
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.segments.stage import SegmentStage

    db, repository = _open(ctx)
    features = FeatureSet(load_profile_config(ctx.settings.features_file))
    return db, SegmentStage(repository, features)


@segments.command("backfill")
@click.option("--quiet", is_flag=True, help="no progress bar, only the result")
@pass_ctx
def segments_backfill(ctx: CliContext, quiet: bool) -> None:
    """Evaluate every stored profile against the rules saved since the last pass, now.

    ``personify serve`` runs a pass on its own whenever a rule is saved
    (PERSONIFY_SEGMENT_BACKFILL_INTERVAL_S); run this where no server does, or to wait for
    it. Prints what the pass did, and the membership events it appended to the log.
    """
    from personify.segments.backfill import SegmentBackfill

    db, stage = _stage(ctx)
    backfill = SegmentBackfill(db, stage)
    if quiet:
        result = backfill.run()
    else:

        def progress(done: int, total: int) -> None:
            # a bar on stderr, redrawn in place; stdout keeps only the JSON result
            filled = round(30 * done / total) if total else 30
            bar = "#" * filled + "-" * (30 - filled)
            click.echo(f"\rprofiles [{bar}] {done}/{total}", nl=False, err=True)

        result = backfill.run(progress=progress)
        click.echo("", err=True)
    echo_json({**result.to_dict(), "eventsAppended": relay_events(ctx, db)})


@segments.command("sweep")
@pass_ctx
def segments_sweep(ctx: CliContext) -> None:
    """Evaluate again the profiles whose windows slid by now, once (serve does it every
    PERSONIFY_SEGMENT_SWEEP_INTERVAL_S); prints what changed."""
    from personify.segments.sweep import SegmentSweep

    db, stage = _stage(ctx)
    result = SegmentSweep(db, stage).sweep()
    echo_json({**result.to_dict(), "eventsAppended": relay_events(ctx, db)})


@segments.command("rfm")
@click.option("--show", is_flag=True, help="print the newest run instead of making one")
@pass_ctx
def segments_rfm(ctx: CliContext, show: bool) -> None:
    """Score every buyer in the lake now: an RFM run's quintile cut points (serve makes one
    every PERSONIFY_SEGMENT_RFM_INTERVAL_S). The cells are segments rfm-<cell>; a backfill
    (serve's, or ``personify segments backfill``) puts every buyer in its cell."""
    from personify.runtime import run_rfm
    from personify.segments.rfm_runner import RfmRunner

    db, repository = _open(ctx)
    runner = RfmRunner(db, repository)
    if show:
        model = runner.current()
        if model is None:
            raise click.ClickException("no RFM run yet: run `personify segments rfm`")
        echo_json(model.to_dict())
        return
    echo_json(run_rfm(ctx.settings, db, runner).to_dict())


# -- clusterings --------------------------------------------------------------------------------


def _clusterings(ctx: CliContext) -> tuple[Database, ClusteringRepository, ClusteringRunner]:
    """The state database, its clusterings, and a runner reading features from the lake."""
    from personify.lake.table import Lake
    from personify.predict.vectors import lake_feature_source
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.segments.clusterings import ClusteringRepository, ClusteringRunner

    db, segments_repository = _open(ctx)
    features = FeatureSet(load_profile_config(ctx.settings.features_file))
    repository = ClusteringRepository(db, segments_repository, features)
    source = lake_feature_source(Lake.from_settings(ctx.settings), features)
    return db, repository, ClusteringRunner(db, repository, segments_repository, source)


def _k(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | str | None:
    """The ``--k`` option: a whole number, or ``auto``."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise click.BadParameter("a whole number, or auto") from exc


def _effects(cluster: Mapping[str, Any], top: int = 3) -> str:
    """The features that set a cluster apart most, with their effect sizes (Cohen's d)."""
    effects = cluster.get("distinguishing", [])[:top]
    return ", ".join(f"{e['feature']} {e['effectSize']:+.2f}" for e in effects) or "-"


def _listed(items: Sequence[Any]) -> str:
    return ", ".join(str(i) for i in items)


def _changes(changes: Mapping[str, Any]) -> str:
    """What a run changed against the run before it, in one line."""
    parts = [
        f"{what} {_listed(changes[what])}"
        for what in ("kept", "appeared", "disappeared")
        if changes.get(what)
    ]
    parts += [f"split {s['from']} into {_listed(s['into'])}" for s in changes.get("split", [])]
    parts += [f"merged {_listed(m['from'])} into {m['into']}" for m in changes.get("merged", [])]
    return "; ".join(parts) or "none"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _report(outcome: RunOutcome, definition: ClusteringDefinition, events: int) -> None:
    """Print a run for people: its clusters as segments, what changed, who moved."""
    run = outcome.run
    key = run.clustering_key
    how = f"restores run {run.restored_from}" if run.restored_from is not None else run.trigger
    click.echo(f"run {run.number} of {key}: {run.status} ({how}) in {outcome.elapsed_s:.2f} s")
    if run.status != "succeeded" or run.report is None:
        return
    report = run.report
    click.echo(
        f"{report['rows']} profiles, {len(run.spec['features'])} features, "
        f"k {report['k']}, silhouette {_number(report['silhouette'])}, "
        f"Davies-Bouldin {_number(report['daviesBouldin'])}"
    )
    clusters = report["clusters"]
    rows = [
        (
            f"{key}/{c['key']}",
            str(c["size"]),
            definition.names.get(c["key"], c["name"]),
            _effects(c),
        )
        for c in clusters
    ]
    header = ("segment", "size", "name", "sets it apart (effect size)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for segment, size, name, effects in [header, *rows]:
        click.echo(f"  {segment:<{widths[0]}}  {size:>{widths[1]}}  {name:<{widths[2]}}  {effects}")
    since = f" (at run {run.restored_from})" if run.restored_from is not None else ""
    click.echo(f"changes{since}: {_changes(report.get('changes', {}))}")
    click.echo(
        f"memberships: {outcome.entered} entered, {outcome.exited} exited; "
        f"{events} events appended to the log"
    )


def _carry_out(ctx: CliContext, key: str, restore: int | None, as_json: bool) -> None:
    """Run clustering ``key`` now (or restore run ``restore``), print the run, relay its
    membership events; a failed run is printed, then an error (exit code 1)."""
    db, repository, runner = _clusterings(ctx)

    def progress(message: str) -> None:
        click.echo(message, err=True)

    outcome = runner.run_now(key, restore=restore, progress=progress)
    events = relay_events(ctx, db)
    if as_json:
        echo_json({**outcome.to_dict(), "eventsAppended": events})
    else:
        _report(outcome, repository.get(key), events)
    if outcome.run.status != "succeeded":
        raise PersonifyError(
            f"run {outcome.run.number} of {key!r} failed: {outcome.run.error}",
            code="clustering_run_failed",
        )


_json_option = click.option("--json", "as_json", is_flag=True, help="print the run as JSON")


@segments.command("recluster")
@click.argument("key")
@_json_option
@pass_ctx
def segments_recluster(ctx: CliContext, key: str, as_json: bool) -> None:
    """Run clustering KEY now over the lake's features, as of now, and make it current.

    Each cluster is the segment KEY/CLUSTER; everyone's memberships become the run's, and
    the entries and exits are appended to the log. Progress goes to stderr; a run that fails
    exits with code 1. ``personify serve`` runs clusterings on their schedules itself.
    """
    _carry_out(ctx, key, None, as_json)


@segments.command("rollback")
@click.argument("key")
@click.argument("run", type=click.IntRange(min=1))
@_json_option
@pass_ctx
def segments_rollback(ctx: CliContext, key: str, run: int, as_json: bool) -> None:
    """Make run RUN of clustering KEY current again: its clusters, and exactly its members.

    A rollback is a new run that copies RUN's model and assignments.
    """
    _carry_out(ctx, key, run, as_json)


def _list_clusterings(ctx: CliContext) -> None:
    for d in _clusterings(ctx)[1].definitions():
        run = f"run {d.current_run}" if d.current_run is not None else "no run"
        features = ",".join(d.spec.features)
        click.echo(f"{d.key:<24} {run:<8} {d.schedule:<8} {features}  {d.name}")


@segments.group("clusterings", invoke_without_command=True)
@click.pass_context
def clusterings(click_ctx: click.Context) -> None:
    """Clusterings: segments found in the data. Without a command, list them."""
    if click_ctx.invoked_subcommand is None:
        _list_clusterings(click_ctx.ensure_object(CliContext))


@clusterings.command("list")
@pass_ctx
def clusterings_list(ctx: CliContext) -> None:
    """List clusterings: key, current run, schedule, features, name."""
    _list_clusterings(ctx)


@clusterings.command("show")
@click.argument("key")
@pass_ctx
def clusterings_show(ctx: CliContext, key: str) -> None:
    """Print clustering KEY and its runs (newest first) as JSON."""
    repository = _clusterings(ctx)[1]
    definition = repository.get(key)
    echo_json({**definition.to_dict(), "runs": [r.to_dict() for r in repository.runs(key)]})


@clusterings.command("create")
@click.argument("key")
@click.option(
    "--feature",
    "features",
    multiple=True,
    required=True,
    help="a feature path, such as orders.all (repeat for each feature)",
)
@click.option(
    "--algorithm",
    default="auto",
    show_default=True,
    help="auto, kmeans, minibatch-kmeans, gmm or hdbscan (docs/segments.md)",
)
@click.option("--k", default="auto", callback=_k, show_default=True, help="clusters: N or auto")
@click.option(
    "--pca", type=click.IntRange(min=1), default=None, help="project onto N principal components"
)
@click.option(
    "--schedule",
    default="weekly",
    show_default=True,
    help="hourly, daily, weekly, manual, or an interval such as 12h",
)
@click.option("--name", default=None, help="a name for people (the key if not given)")
@click.option("--description", default="", help="what the clustering is for")
@pass_ctx
def clusterings_create(
    ctx: CliContext,
    key: str,
    features: tuple[str, ...],
    algorithm: str,
    k: int | str,
    pca: int | None,
    schedule: str,
    name: str | None,
    description: str,
) -> None:
    """Save clustering KEY over the given features and print it as JSON.

    Unless its schedule is manual, its first run is due at once: ``personify serve`` carries
    it out, or run ``personify segments recluster KEY``.
    """
    spec = {"features": list(features), "algorithm": algorithm, "k": k, "pca": pca}
    created = _clusterings(ctx)[1].create(
        key, spec, name=name, description=description, schedule=schedule
    )
    echo_json(created.to_dict())


@clusterings.command("name")
@click.argument("key")
@click.argument("cluster")
@click.argument("name", required=False)
@click.option("--clear", is_flag=True, help="go back to the automatic name")
@pass_ctx
def clusterings_name(
    ctx: CliContext, key: str, cluster: str, name: str | None, clear: bool
) -> None:
    """Name cluster CLUSTER of clustering KEY (its segment KEY/CLUSTER); the name stays
    through later runs. Prints the clustering as JSON."""
    if (name is None) == (not clear):
        raise click.UsageError("give a NAME or --clear, not both")
    renamed = _clusterings(ctx)[1].rename_cluster(key, cluster, None if clear else name)
    echo_json(renamed.to_dict())


@clusterings.command("delete")
@click.argument("key")
@pass_ctx
def clusterings_delete(ctx: CliContext, key: str) -> None:
    """Archive clustering KEY and its segments (refused while a rule reads one of them);
    prints it as JSON."""
    echo_json(_clusterings(ctx)[1].archive(key).to_dict())
