"""``personify recommend …``: the recommenders trained on the lake. ``evaluate`` fits every
recommender on what was known at T and scores them on what users did after it, printing one
JSON object; ``train`` fits the learned model as of now and replaces the serving index;
``show`` prints a user's recommendations as the API serves them (docs/recommend.md)."""

from __future__ import annotations

import math

import click

from personify.cli.context import CliContext, echo_json, parse_moment, pass_ctx
from personify.errors import ValidationError


@click.group()
def recommend() -> None:
    """Recommenders: offline evaluation at a temporal split, the serving index, a user's
    recommendations."""


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


@recommend.command("train")
@click.option(
    "--model",
    type=click.Choice(["auto", "ease", "als", "bpr"]),
    default=None,
    help="the learned model (default: PERSONIFY_RECOMMEND_MODEL; auto: the evaluation's choice)",
)
@click.option(
    "--size",
    type=click.IntRange(1, 1000),
    default=None,
    help="items kept per user and per item (default: PERSONIFY_RECOMMEND_INDEX_SIZE)",
)
@pass_ctx
def recommend_train(ctx: CliContext, model: str | None, size: int | None) -> None:
    """Train the learned model on the lake as of now and replace the serving index; prints
    the run (model, parameters, lake version, metrics)."""
    from personify.lake.table import Lake
    from personify.recommend.index import RecommendationIndexer
    from personify.store.database import open_database

    settings = ctx.settings
    indexer = RecommendationIndexer(
        open_database(settings),
        Lake.from_settings(settings),
        model=model or settings.recommend_model,
        size=size or settings.recommend_index_size,
    )
    echo_json(indexer.train().to_dict())


@recommend.command("show")
@click.argument("user")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--include-seen", is_flag=True, help="keep the items the user interacted with lately")
@pass_ctx
def recommend_show(ctx: CliContext, user: str, limit: int, include_seen: bool) -> None:
    """Print USER's recommendations (any of their ids) as the API serves them: each item
    with its score, source and anchor; an unknown user gets popular items."""
    from personify.profiles.document import personalization_allowed
    from personify.profiles.features import FeatureSet, load_profile_config
    from personify.profiles.repository import ProfileRepository
    from personify.recommend.service import RecommendationService
    from personify.segments.repository import SegmentRepository
    from personify.store.database import open_database

    settings = ctx.settings
    db = open_database(settings)
    features = FeatureSet(load_profile_config(settings.features_file))
    stored = ProfileRepository(db, features).find(user)
    profile_id: str | None = None
    segments: list[str] = []
    if stored is not None and personalization_allowed(stored.state(), features):
        profile_id = stored.profile_id
        segments = [s["key"] for s in SegmentRepository(db).profile_segments(profile_id)]
    found = RecommendationService(db).recommend(
        profile_id, limit=limit, exclude_seen=not include_seen, segments=segments
    )
    echo_json(
        {
            "userId": user,
            "profileId": profile_id,
            "items": [r.to_dict() for r in found],
        }
    )
