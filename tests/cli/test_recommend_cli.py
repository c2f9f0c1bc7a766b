"""``personify recommend evaluate`` end to end: a generated shop in a real lake, the command
through click's runner with the CLI's environment, one JSON object out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner, Result

from personify.cli.context import PersonifyGroup
from personify.cli.main import main
from personify.cli.recommend import recommend
from personify.clock import format_timestamp
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.recommend.stage import RecommendationStage
from personify.store.database import Database
from tests.lake.conftest import cli_env, normalized
from tests.recommend.conftest import AS_OF, END, arrived, shop_lake

# the root command as it is once ``recommend`` is registered beside the others
ROOT: click.Group = (
    main
    if "recommend" in main.commands
    else PersonifyGroup("personify", commands=[*main.commands.values(), recommend])
)


class Shop:
    """A data folder whose lake holds a generated shop, and the command run on it."""

    def __init__(self, data_dir: Path, events: list[dict[str, Any]] | None = None) -> None:
        self.env = cli_env(data_dir)
        self.data_dir = data_dir
        self.events = events or []

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(ROOT, ["recommend", *args], env=self.env, catch_exceptions=False)

    def json(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return msgspec.json.decode(result.stdout)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp("recommend-cli")
    generated, _ = shop_lake(folder / "data" / "lake", users=400, items=120)
    # the CLI reads .env from the working directory; run it where there is none
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield Shop(folder / "data", generated.events)


def test_evaluate_prints_every_recommender_and_the_chosen_one(shop: Shop) -> None:
    shown = shop.json("evaluate", "--as-of", format_timestamp(AS_OF), "--k", "5")
    assert shown["k"] == 5 and shown["as_of"] == format_timestamp(AS_OF)
    assert shown["test_users"] > 100
    models = shown["recommenders"]
    assert set(models) == {"popularity", "covisitation", "ease", "als", "bpr"}
    for metrics in models.values():
        assert set(metrics) >= {"hit_rate", "recall", "ndcg", "fit_seconds"}
    assert shown["chosen"] in {"ease", "als", "bpr"}
    assert models[shown["chosen"]]["ndcg"] >= models["als"]["ndcg"]
    assert models["covisitation"]["ndcg"] > models["popularity"]["ndcg"]


def test_evaluate_on_chosen_events_with_chosen_weights(shop: Shop) -> None:
    shown = shop.json(
        "evaluate",
        "--as-of",
        AS_OF.date().isoformat(),
        "--event",
        "Product Viewed",
        "--event",
        "Order Completed",
        "--weight",
        "Order Completed=10",
        "--until",
        format_timestamp(END),
    )
    assert shown["events"] == ["Order Completed", "Product Viewed"]
    assert shown["weights"] == {"Order Completed": 10.0, "Product Viewed": 1.0}
    assert shown["until"] == format_timestamp(END)
    assert shown["k"] == 10


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--as-of", format_timestamp(END)], "no_test_users"),
        (["--as-of", format_timestamp(AS_OF), "--weight", "Product Viewed"], "invalid_weight"),
        (["--as-of", format_timestamp(AS_OF), "--weight", "Product Viewed=-1"], "invalid_weight"),
        (
            ["--as-of", format_timestamp(AS_OF), "--until", format_timestamp(AS_OF)],
            "invalid_window",
        ),
    ],
)
def test_evaluate_refuses_what_it_cannot_do(shop: Shop, args: list[str], code: str) -> None:
    result = shop.run("evaluate", *args)
    assert result.exit_code == 1
    assert f"error [{code}]" in result.stderr


def test_an_empty_data_folder_has_no_test_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        ROOT,
        ["recommend", "evaluate", "--as-of", format_timestamp(AS_OF)],
        env=cli_env(tmp_path / "data"),
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and "error [no_test_users]" in result.stderr


def test_train_then_show_a_users_recommendations(shop: Shop) -> None:
    run = shop.json("train", "--model", "ease", "--size", "5")
    assert run["model"] == "ease" and run["params"]["l2"] == 500.0
    assert run["users"] > 300 and run["items"] > 100
    assert run["lakeVersion"] is not None
    # trained as of now, long after the shop's last day: no split to evaluate at
    assert run["metrics"]["chosenBy"] == "default"

    # one shopper's events applied by the worker's processor, so the state knows them
    user = next(e["userId"] for e in shop.events if e.get("userId"))
    mine = [
        normalized(e, received_at=arrived(e))
        for e in shop.events
        if e.get("userId") == user or e.get("anonymousId") == shop_anonymous(shop, user)
    ]
    db = Database(f"sqlite:///{shop.data_dir / 'personify.db'}")
    try:
        features = FeatureSet()
        ProfileProcessor(db, features, stages=[RecommendationStage(features)]).apply(
            [view_event(e) for e in mine]
        )
    finally:
        db.dispose()
    shown = shop.json("show", user, "--limit", "7")
    assert shown["profileId"] == user
    # the index's five, and nothing the live counters know of but what they saw themselves
    assert [item["source"] for item in shown["items"]] == ["learned"] * 5
    shown = shop.json("show", user, "--limit", "7", "--include-seen")
    sources = [item["source"] for item in shown["items"]]
    assert sources[:5] == ["learned"] * 5 and len(sources) == 7
    assert set(sources[5:]) <= {"covisitation", "popular"}
    unknown = shop.json("show", "nobody", "--limit", "3")
    assert unknown["profileId"] is None
    assert [item["source"] for item in unknown["items"]] == ["popular"] * 3


def shop_anonymous(shop: Shop, user: str) -> str | None:
    """The anonymousId the shopper browsed with before signing up."""
    return next((e.get("anonymousId") for e in shop.events if e.get("userId") == user), None)
