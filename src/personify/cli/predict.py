"""``personify predict …``: churn and lifetime-value models from the command line. Train a
version (the gate decides whether it is served), backtest one at a past cut-off with an HTML
report, list the versions, promote or roll back by hand, and score every profile to a Parquet
file with the served version (docs/predict.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from personify.cli.context import CliContext, echo_json, parse_moment, pass_ctx
from personify.clock import SystemClock, format_timestamp

if TYPE_CHECKING:
    from personify.predict.registry import ModelRegistry, ModelVersion
    from personify.predict.targets import Target
    from personify.predict.trainer import ModelTrainer
    from personify.store.database import Database

_TARGET = click.Choice(["churn", "clv"])


@contextmanager
def _database(ctx: CliContext) -> Iterator[Database]:
    """The state database for one command, closed when it is done."""
    from personify.store.database import open_database

    db = open_database(ctx.settings)
    try:
        yield db
    finally:
        db.dispose()


@contextmanager
def _trainer(ctx: CliContext) -> Iterator[ModelTrainer]:
    """A trainer on the settings' lake, feature definitions, state database and models."""
    from personify.predict.trainer import ModelTrainer

    with _database(ctx) as db:
        yield ModelTrainer.from_settings(ctx.settings, db=db)


@contextmanager
def _registry(ctx: CliContext) -> Iterator[ModelRegistry]:
    """The model registry alone (listing, promotions): no lake is opened."""
    from personify.predict.registry import ModelRegistry

    with _database(ctx) as db:
        yield ModelRegistry(db, ctx.settings.resolved_models_dir)


def _target(name: str, horizon_days: float | None, event: str | None) -> Target:
    from personify.predict.targets import target

    return target(name, horizon_days, event)


def _target_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--horizon-days`` and ``--event``, shared by the commands that name a target."""
    function = click.option(
        "--event",
        default=None,
        help="churn: the qualifying event (default any); clv: the order event (Order Completed)",
    )(function)
    return click.option(
        "--horizon-days", type=float, default=None, help="H: 30 for churn, 90 for clv"
    )(function)


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The metrics without their tables (the reliability bins): what fits on a screen."""
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if not isinstance(v, Mapping | list | tuple)}


@click.group()
def predict() -> None:
    """Churn and lifetime-value models: train, evaluate, list, promote, roll back, score."""


@predict.command("train")
@click.argument("name", metavar="churn|clv", type=_TARGET)
@click.option("--as-of", "as_of", default=None, help="the cut-off T (default: the lake's newest)")
@_target_options
@pass_ctx
def predict_train(
    ctx: CliContext, name: str, as_of: str | None, horizon_days: float | None, event: str | None
) -> None:
    """Train a version from what was known at T; the gate promotes it only when it beats the
    baseline and the served version on validation. Prints the version as JSON."""
    chosen = _target(name, horizon_days, event)
    with _trainer(ctx) as trainer:
        run = trainer.train(chosen, as_of=parse_moment(as_of) if as_of else None)
    report = run.report
    shown: dict[str, Any] = run.version.to_dict() if run.version is not None else {}
    shown.update(
        {
            "promoted": run.promoted,
            "gate": report["gate"],
            "validation": report["validation"],
            "model": _scalars(report["model"]),
            "baseline": _scalars(report.get("baseline")),
        }
    )
    echo_json(shown)


@predict.command("evaluate")
@click.argument("name", metavar="churn|clv", type=_TARGET)
@click.option("--as-of", "as_of", required=True, help="the backtest's cut-off T (ISO-8601)")
@_target_options
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the HTML report (default: reports/<target>-<T>.html in the data folder)",
)
@pass_ctx
def predict_evaluate(
    ctx: CliContext,
    name: str,
    as_of: str,
    horizon_days: float | None,
    event: str | None,
    report_path: Path | None,
) -> None:
    """Backtest at T: train as `train` at T would, predict (T, T + H] and compare with what
    happened, beside the baseline. Prints the result as JSON and writes an HTML report."""
    from personify.predict.report import evaluation_report

    chosen = _target(name, horizon_days, event)
    moment = parse_moment(as_of)
    with _trainer(ctx) as trainer:
        evaluation = trainer.evaluate(chosen, as_of=moment)
    path = report_path or (
        ctx.settings.data_dir / "reports" / f"{name}-{moment:%Y%m%dT%H%M%SZ}.html"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(evaluation_report(evaluation.result, evaluation.curves), encoding="utf-8")
    echo_json(evaluation.result)
    # stdout stays one JSON object
    click.echo(f"report -> {path}", err=True)


def _value(value: Any) -> str:
    """A metric for the table: four significant digits, or ``-``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return "-"


@predict.command("models")
@click.argument("name", metavar="[churn|clv]", type=_TARGET, required=False)
@click.option("--json", "as_json", is_flag=True, help="print the versions as a JSON list")
@pass_ctx
def predict_models(ctx: CliContext, name: str | None, as_json: bool) -> None:
    """List the model versions, newest first; `*` marks the one served for its target."""
    with _registry(ctx) as registry:
        versions = registry.versions(name)
    if as_json:
        echo_json([v.to_dict() for v in versions])
        return
    rows = [
        (
            str(v.id),
            v.target.key,
            f"v{v.number}",
            v.status,
            "*" if v.served else "",
            str(v.report.get("gate", {}).get("metric") or "-"),
            _value(v.report.get("gate", {}).get("candidate")),
            _value(v.report.get("gate", {}).get("baseline")),
            format_timestamp(v.as_of),
        )
        for v in versions
    ]
    header = ("id", "target", "version", "status", "served", "metric", "value", "baseline", "as of")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _echo_version(version: ModelVersion) -> None:
    echo_json(version.to_dict())


@predict.command("promote")
@click.argument("model_id", type=int)
@pass_ctx
def predict_promote(ctx: CliContext, model_id: int) -> None:
    """Serve version MODEL_ID for its target from now on, whatever the gate decided."""
    with _registry(ctx) as registry:
        _echo_version(registry.promote(model_id, reason="manual"))


@predict.command("rollback")
@click.argument("name", metavar="churn|clv", type=_TARGET)
@pass_ctx
def predict_rollback(ctx: CliContext, name: str) -> None:
    """Serve again the version served before the current one; prints it as JSON."""
    with _registry(ctx) as registry:
        _echo_version(registry.rollback(name))


@predict.command("score")
@click.argument("name", metavar="churn|clv", type=_TARGET)
@click.option("--as-of", "as_of", default=None, help="score as of T (default: the lake's newest)")
@_target_options
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_ctx
def predict_score(
    ctx: CliContext,
    name: str,
    as_of: str | None,
    horizon_days: float | None,
    event: str | None,
    output: Path,
) -> None:
    """Score every profile as of T with the served version of the target, beside the
    baseline, and write the scores to a Parquet file (one row per user)."""
    import pyarrow.parquet as pq

    chosen = _target(name, horizon_days, event)
    with _trainer(ctx) as trainer:
        table = trainer.score(chosen, as_of=parse_moment(as_of) if as_of else None)
    pq.write_table(table, output)
    numbers = sorted(set(table.column("model_version").to_pylist()))
    version = ", ".join(str(n) for n in numbers) or "-"
    click.echo(f"{table.num_rows} users -> {output} (model version {version})")


@predict.command("rescore")
@pass_ctx
def predict_rescore(ctx: CliContext) -> None:
    """Score the stored profiles whose predictions are missing, from another version or
    older than PERSONIFY_PREDICT_STALE_AFTER_S, now (serve does it every
    PERSONIFY_PREDICT_RESCORE_INTERVAL_S, and after every promotion and rollback); the segment
    rules that read predictions are evaluated again for them. Prints what was scored."""
    from personify.cli.segments import relay_events
    from personify.predict.registry import ModelRegistry
    from personify.predict.rescore import PredictionRescore
    from personify.predict.stage import PredictionStage
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.segments.repository import SegmentRepository
    from personify.segments.stage import SegmentStage

    settings = ctx.settings
    with _database(ctx) as db:
        features = FeatureSet(load_profile_config(settings.features_file))
        registry = ModelRegistry(db, settings.resolved_models_dir)
        segments = SegmentStage(SegmentRepository(db), features)
        rescore = PredictionRescore(
            db,
            registry,
            PredictionStage(registry, features),
            stale_after_s=settings.predict_stale_after_s,
            after_scoring=lambda conn, rows: segments.evaluate_stored(
                conn, rows, SystemClock().now(), reason="prediction"
            ),
        )
        result = rescore.run()
        echo_json({**result.to_dict(), "eventsAppended": relay_events(ctx, db)})


@predict.command("monitor")
@click.option(
    "--history", "history", type=int, default=0, help="also list this many earlier checks"
)
@click.option("--no-record", is_flag=True, help="check without keeping the check or a cohort")
@pass_ctx
def predict_monitor(ctx: CliContext, history: int, no_record: bool) -> None:
    """Check the served models now: feature and score drift against their training, the
    realised performance of cohorts whose horizon passed, and alerts (serve checks once a
    day, PERSONIFY_PREDICT_MONITOR_INTERVAL_S). Prints the checks as JSON."""
    from personify.lake.table import Lake
    from personify.predict.monitor import ModelMonitor, MonitorThresholds
    from personify.predict.registry import ModelRegistry
    from personify.profiles.features import FeatureSet, load_profile_config

    settings = ctx.settings
    with _database(ctx) as db:
        registry = ModelRegistry(db, settings.resolved_models_dir)
        monitor = ModelMonitor(
            db,
            registry,
            FeatureSet(load_profile_config(settings.features_file)),
            settings.resolved_models_dir,
            lake=Lake.from_settings(settings),
            thresholds=MonitorThresholds(
                psi_threshold=settings.predict_drift_psi_threshold,
                auc_drop=settings.predict_alert_auc_drop,
                mae_rise=settings.predict_alert_mae_rise,
            ),
        )
        checks = monitor.check(record=not no_record)
        body: dict[str, Any] = {"checks": checks}
        if not checks:
            body["message"] = "no model is served: run `personify predict train churn` first"
        if history:
            # a recorded check is the newest of the history: leave it out
            skip = 0 if no_record else 1
            body["history"] = {
                c["target"]: monitor.history(c["target"], limit=history + skip)[skip:]
                for c in checks
            }
        echo_json(body)
