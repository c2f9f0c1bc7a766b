"""``personify experiments …``: experiments from the command line: define, start, stop,
change (with an explicit new phase), report, analyse summary statistics from anywhere,
update bandits and estimate policies off-line (docs/experiments.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from personify.cli.context import CliContext, echo_json, parse_moment, pass_ctx, read_json

if TYPE_CHECKING:
    from personify.experiments.service import ExperimentService


def _service(ctx: CliContext) -> ExperimentService:
    import functools

    from personify.experiments.repository import ExperimentRepository
    from personify.experiments.service import ExperimentService
    from personify.runtime import open_warehouse
    from personify.store.database import open_database

    db = open_database(ctx.settings)
    return ExperimentService(
        ExperimentRepository(db), functools.partial(open_warehouse, ctx.settings, db)
    )


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):+.2f}%"


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{float(value):.{digits}g}"


def render_text(result: Mapping[str, Any]) -> str:
    """A report as people read it in a terminal: SRM first, then a table per metric."""
    lines: list[str] = []
    if "experiment" in result:
        lines.append(
            f"Experiment {result['experiment']} (phase {result.get('phase')}), "
            f"{result.get('method')} analysis as of {result.get('asOf')}"
        )
        units = result.get("units") or {}
        lines.append("Users: " + ", ".join(f"{k} {v}" for k, v in units.items()))
        if result.get("multipleExposures"):
            lines.append(
                f"Left out: {result['multipleExposures']} users exposed to more than one variant"
            )
    srm = result.get("srm") or {}
    if srm:
        if srm.get("ok", True):
            lines.append(f"Sample ratio check: ok (p = {_num(srm.get('pValue'))})")
        else:
            lines.append(
                f"!! SAMPLE RATIO MISMATCH (p = {_num(srm.get('pValue'))}): the split is not "
                "the configured one; do not trust these results"
            )
    for metric in result.get("metrics", []):
        kind = " (guardrail)" if metric.get("guardrail") else ""
        control = metric.get("control") or {}
        lines.append("")
        lines.append(
            f"{metric['key']}{kind}: mean {_num(control.get('mean'))} in "
            f"{control.get('variant')} (control, {control.get('users')} users)"
        )
        lines.append(
            f"  {'variant':<20} {'users':>7} {'mean':>10} {'uplift':>9} "
            f"{'interval':>22} {'p / win':>8}  result"
        )
        for entry in metric["variants"]:
            if entry.get("error"):
                lines.append(
                    f"  {entry['variant']:<20} {entry.get('users') or 0:>7}  {entry['error']}"
                )
                continue
            relative = entry.get("relative") or {}
            ci = relative.get("ci") or [None, None]
            odds = entry.get("adjustedPValue", entry.get("pValue"))
            if odds is None:
                odds = entry.get("chanceToWin")
            lines.append(
                f"  {entry['variant']:<20} {entry.get('users') or 0:>7} "
                f"{_num(entry.get('mean')):>10} {_pct(relative.get('estimate')):>9} "
                f"{'[' + _pct(ci[0]) + ', ' + _pct(ci[1]) + ']':>22} {_num(odds, 3):>8}  "
                f"{'significant' if entry.get('significant') else 'not significant'}"
            )
    for factor, analysis in (result.get("factors") or {}).items():
        lines.append("")
        lines.append(f"Factor {factor}:")
        lines.extend("  " + line for line in render_text(analysis).splitlines() if line)
    return "\n".join(lines)


@click.group()
def experiments() -> None:
    """A/B, multivariate and bandit experiments."""


@experiments.command("list")
@click.option("--status", type=click.Choice(["draft", "running", "stopped"]), default=None)
@pass_ctx
def experiments_list(ctx: CliContext, status: str | None) -> None:
    """List experiments: key, status, phase, type, variants."""
    for found in _service(ctx).repository.list(status):
        variants = ", ".join(f"{v['key']}:{v['weight']:g}" for v in found["variants"])
        click.echo(
            f"{found['key']}\t{found['status']}\tphase {found['phase']}\t{found['type']}\t{variants}"
        )


@experiments.command("show")
@click.argument("key")
@pass_ctx
def experiments_show(ctx: CliContext, key: str) -> None:
    """One experiment with its phases, as JSON."""
    echo_json(_service(ctx).repository.get(key))


@experiments.command("create")
@click.argument("body")
@click.option("--start", is_flag=True, help="start it at once")
@pass_ctx
def experiments_create(ctx: CliContext, body: str, start: bool) -> None:
    """Save an experiment (JSON, @FILE or -) as a draft, or running with --start."""
    repository = _service(ctx).repository
    found = repository.create(read_json(body))
    echo_json(repository.start(found["key"]) if start else found)


@experiments.command("update")
@click.argument("key")
@click.argument("body")
@click.option("--new-phase", is_flag=True, help="end the current phase; start the next with this")
@click.option("--reason", default=None, help="why the new phase")
@pass_ctx
def experiments_update(
    ctx: CliContext, key: str, body: str, new_phase: bool, reason: str | None
) -> None:
    """Change an experiment (the fields given replace the saved ones)."""
    echo_json(
        _service(ctx).repository.update(key, read_json(body), new_phase=new_phase, reason=reason)
    )


_AT = click.option(
    "--at",
    default=None,
    help="backdate it (ISO 8601, UTC unless it has an offset): an experiment that ran elsewhere",
)


@experiments.command("start")
@click.argument("key")
@_AT
@pass_ctx
def experiments_start(ctx: CliContext, key: str, at: str | None) -> None:
    """Start a draft, or restart a stopped experiment in its next phase."""
    echo_json(_service(ctx).repository.start(key, at=parse_moment(at) if at is not None else None))


@experiments.command("stop")
@click.argument("key")
@_AT
@pass_ctx
def experiments_stop(ctx: CliContext, key: str, at: str | None) -> None:
    """Stop a running experiment."""
    echo_json(_service(ctx).repository.stop(key, at=parse_moment(at) if at is not None else None))


@experiments.command("delete")
@click.argument("key")
@pass_ctx
def experiments_delete(ctx: CliContext, key: str) -> None:
    """Delete an experiment that is not running."""
    _service(ctx).repository.delete(key)
    click.echo(f"deleted {key}")


@experiments.command("analyze")
@click.argument("file")
@click.option("--method", type=click.Choice(["frequentist", "bayesian", "sequential"]))
@click.option("--alpha", type=float, default=None)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def experiments_analyze(file: str, method: str | None, alpha: float | None, fmt: str) -> None:
    """Analyse per-variant summary statistics from anywhere (a JSON file, or - for standard
    input), as POST /v1/experiments/analyze does."""
    from personify.experiments.analysis import analyze

    # FILE is a path (or - for standard input)
    request = read_json(file if file == "-" else "@" + file)
    if not isinstance(request, dict):
        raise click.BadParameter("the file holds a JSON object (docs/experiments.md)")
    if method is not None:
        request["method"] = method
    if alpha is not None:
        request["alpha"] = alpha
    result = analyze(request)
    if fmt == "json":
        echo_json(result)
    else:
        click.echo(render_text(result))


@experiments.command("report")
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--phase", type=int, default=None, help="a phase (default: the current)")
@click.option("--method", type=click.Choice(["frequentist", "bayesian", "sequential"]))
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the uplift-over-time chart here (.png or .html)",
)
@pass_ctx
def experiments_report(
    ctx: CliContext,
    key: str,
    fmt: str,
    phase: int | None,
    method: str | None,
    chart: Path | None,
) -> None:
    """An experiment's results from the lake: per metric and variant the users, the
    statistic, uplift with interval, p-value or chance to win, and the SRM check."""
    from personify.experiments.service import chart_html, chart_png

    result = _service(ctx).results(key, phase=phase, method=method, daily=chart is not None)
    if chart is not None:
        if chart.suffix.lower() == ".png":
            chart.write_bytes(chart_png(result))
        else:
            chart.write_text(chart_html(result), encoding="utf-8")
    if fmt == "json":
        echo_json(result)
    else:
        click.echo(render_text(result))
        if chart is not None:
            click.echo(f"\nchart: {chart}")


@experiments.command("bandit")
@click.argument("key")
@pass_ctx
def experiments_bandit(ctx: CliContext, key: str) -> None:
    """Recompute a bandit's allocation now from its decisions' rewards in the lake."""
    echo_json(_service(ctx).update_bandit(key))


@experiments.command("evaluate")
@click.argument("key")
@click.argument("policy")
@click.option("--alpha", type=float, default=0.05)
@pass_ctx
def experiments_evaluate(ctx: CliContext, key: str, policy: str, alpha: float) -> None:
    """Estimate a candidate policy off-line from the logged decisions: POLICY is
    {"arm": KEY}, {"allocation": {...}} or {"byContext": {...}} (JSON, @FILE or -)."""
    found = read_json(policy)
    if not isinstance(found, dict):
        raise click.BadParameter("a policy is a JSON object")
    echo_json(_service(ctx).evaluate(key, found, alpha=alpha))
