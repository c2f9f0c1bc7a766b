"""``personify recommend …``: the recommenders trained on the lake. ``evaluate`` fits every
recommender on what was known at T and scores them on what users did after it, printing one
JSON object (docs/recommend.md)."""

from __future__ import annotations

import math

import click

from personify.cli.context import CliContext, echo_json, parse_moment, pass_ctx
from personify.errors import ValidationError


@click.group()
def recommend() -> None:
    """Recommenders trained on the lake: offline evaluation at a temporal split."""


def _weights(pairs: tuple[str, ...]) -> dict[str, float]:
    """``NAME=WEIGHT`` options over the default weights."""
    from personify.recommend.interactions import DEFAULT_WEIGHTS

    weights = dict(DEFAULT_WEIGHTS)
    for pair in pairs:
        name, sep, text = pair.rpartition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value) or value < 0:
            raise ValidationError(
                f"--weight takes NAME=WEIGHT with a number >= 0, not {pair!r}",
                code="invalid_weight",
            )
        weights[name] = value
    return weights


@recommend.command("evaluate")
@click.option(
    "--as-of", "as_of", required=True, help="T: train on what was received by T, test after"
)
@click.option("--k", "k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--event",
    "events",
    multiple=True,
    help="only these event names (repeat; default: every weighted event)",
)
@click.option(
    "--weight",
    "weight_pairs",
    multiple=True,
    help="NAME=WEIGHT for an event (repeat; defaults: Product Viewed=1, Product Added=3, "
    "Order Completed=5)",
)
@click.option("--until", default=None, help="test only what was received by this time")
@click.option("--seed", default=7, show_default=True, help="seed of the learned models")
@pass_ctx
def recommend_evaluate(
    ctx: CliContext,
    as_of: str,
    k: int,
    events: tuple[str, ...],
    weight_pairs: tuple[str, ...],
    until: str | None,
    seed: int,
) -> None:
    """Fit popularity, co-visitation, EASE, ALS and BPR on the interactions received by T,
    and print hit rate, recall and NDCG at k of each on the test users, and the chosen one."""
    from personify.lake.table import Lake
    from personify.recommend.evaluation import default_recommenders, evaluate

    result = evaluate(
        Lake.from_settings(ctx.settings),
        parse_moment(as_of),
        k=k,
        events=list(events) or None,
        weights=_weights(weight_pairs),
        until=parse_moment(until) if until else None,
        recommenders=default_recommenders(seed),
    )
    echo_json(result)
