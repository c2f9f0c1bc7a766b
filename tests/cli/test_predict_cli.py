"""``personify predict …`` end to end: a generated shop in a real lake, the registry in a real
SQLite state database, every command through click's runner with the CLI's environment."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from personify.cli.main import main
from personify.cli.shop_history import generate_history
from personify.clock import format_timestamp
from tests.lake.conftest import cli_env, normalized, write_lake

END = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
CUSTOMERS = 400


class Shop:
    """A data folder whose lake holds the generated shop, and the commands run on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = cli_env(data_dir)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["predict", *args], env=self.env, catch_exceptions=False)

    def ok(self, *args: str) -> str:
        """The standard output of a command that must succeed."""
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result.stdout

    def json(self, *args: str) -> Any:
        return msgspec.json.decode(self.ok(*args))

    def served(self) -> dict[int, bool]:
        """``models --json``'s served flags by version number."""
        return {v["version"]: v["served"] for v in self.json("models", "--json")}


def _arrived(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")) + timedelta(seconds=1)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp("predict-cli")
    history = generate_history(END, customers=CUSTOMERS, days=120, sale_at=0.35)
    data_dir = folder / "data"
    write_lake(data_dir / "lake", [normalized(e, received_at=_arrived(e)) for e in history.events])
    # the CLI reads .env from the working directory; run it where there is none
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield Shop(data_dir)


@pytest.fixture(scope="module")
def trained(shop: Shop) -> dict[str, Any]:
    """The first churn version, served (promoted by hand when the gate kept it)."""
    shown: dict[str, Any] = shop.json(
        "train",
        "churn",
        "--as-of",
        format_timestamp(END - timedelta(days=1)),
        "--horizon-days",
        "30",
    )
    if not shown["promoted"]:
        shop.ok("promote", str(shown["id"]))
    return shown


def test_train_prints_the_version_with_the_gate_and_validation(trained: dict[str, Any]) -> None:
    assert trained["version"] == 1
    assert trained["targetKey"] == "churn:30d:*"
    assert trained["gate"]["decision"] in {"promoted", "kept"}
    assert trained["promoted"] == (trained["gate"]["decision"] == "promoted")
    assert trained["gate"]["metric"] == "roc_auc"
    assert trained["validation"]["method"] in {"next_window", "held_out_users"}
    for side in ("model", "baseline"):
        assert 0.0 <= trained[side]["roc_auc"] <= 1.0
        # scalars only: the reliability table is left out
        assert "reliability" not in trained[side]


def test_models_lists_the_version_served(shop: Shop, trained: dict[str, Any]) -> None:
    [listed] = shop.json("models", "--json")
    assert listed["id"] == trained["id"]
    assert listed["version"] == 1 and listed["served"] is True
    assert listed["status"] == "promoted"
    assert shop.json("models", "clv", "--json") == []
    table = shop.ok("models").splitlines()
    assert table[0].split()[:5] == ["id", "target", "version", "status", "served"]
    assert table[1].split()[:5] == [str(trained["id"]), "churn:30d:*", "v1", "promoted", "*"]


def test_score_writes_one_row_per_user_with_the_served_version(
    shop: Shop, trained: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "churn.parquet"
    printed = shop.ok("score", "churn", "--horizon-days", "30", "--output", str(output))
    table = pq.read_table(output)
    assert table.column_names == [
        "user_id",
        "churn_probability",
        "baseline_churn_probability",
        "cold_start",
        "model_version",
    ]
    users = table.column("user_id").to_pylist()
    assert len(users) == len(set(users)) == CUSTOMERS
    assert set(table.column("model_version").to_pylist()) == {1}
    probabilities = table.column("churn_probability").to_pylist()
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert printed.strip() == f"{CUSTOMERS} users -> {output} (model version 1)"


def test_the_feature_table_carries_the_served_models_predictions(
    shop: Shop, trained: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "features.parquet"
    as_of = format_timestamp(END - timedelta(days=1))
    result = CliRunner().invoke(
        main, ["lake", "features", "--as-of", as_of, "--output", str(output)], env=shop.env
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(output)
    assert {"predictions__churn__probability", "predictions__churn__model_version"} <= set(
        table.column_names
    )
    # the same features give the same scores as the batch scoring of the same cut-off
    shop.ok(
        "score",
        "churn",
        "--as-of",
        as_of,
        "--horizon-days",
        "30",
        "--output",
        str(tmp_path / "s.parquet"),
    )
    batch = pq.read_table(tmp_path / "s.parquet").to_pydict()
    by_user = dict(zip(batch["user_id"], batch["churn_probability"], strict=True))
    rows = table.select(["user_id", "predictions__churn__probability"]).to_pylist()
    assert len(rows) == len(by_user) > CUSTOMERS * 0.9
    assert all(r["predictions__churn__probability"] == by_user[r["user_id"]] for r in rows)


def test_score_without_a_served_model_names_the_train_command(shop: Shop, tmp_path: Path) -> None:
    output = tmp_path / "clv.parquet"
    result = shop.run("score", "clv", "--output", str(output))
    assert result.exit_code == 1
    assert "personify predict train clv" in result.stderr
    assert result.stderr.startswith("error [no_served_model]: ")
    assert "Traceback" not in result.output
    assert not output.exists()


def test_evaluate_prints_model_and_baseline_metrics_and_writes_the_report(
    shop: Shop, tmp_path: Path
) -> None:
    report = tmp_path / "backtest.html"
    as_of = format_timestamp(END - timedelta(days=31))
    result = shop.run(
        "evaluate", "churn", "--as-of", as_of, "--horizon-days", "30", "--report", str(report)
    )
    assert result.exit_code == 0, result.output
    body = msgspec.json.decode(result.stdout)
    assert body["targetKey"] == "churn:30d:*" and body["asOf"] == as_of
    assert body["users"] > 0
    for side in ("model", "baseline"):
        assert {"roc_auc", "pr_auc", "brier", "log_loss"} <= body[side].keys()
        assert 0.0 <= body[side]["roc_auc"] <= 1.0
    assert str(report) in result.stderr
    page = report.read_text(encoding="utf-8")
    assert "<svg" in page and "churn" in page


def test_a_manual_promotion_is_rolled_back_to_the_version_before(
    shop: Shop, trained: dict[str, Any]
) -> None:
    refused = shop.run("rollback", "churn")
    assert refused.exit_code == 1
    assert "nothing to roll back to" in refused.stderr
    second = shop.json(
        "train",
        "churn",
        "--as-of",
        format_timestamp(END - timedelta(days=45)),
        "--horizon-days",
        "30",
    )
    assert second["version"] == 2
    promoted = shop.json("promote", str(second["id"]))
    assert promoted["served"] is True and promoted["status"] == "promoted"
    assert shop.served() == {1: False, 2: True}
    restored = shop.json("rollback", "churn")
    assert restored["id"] == trained["id"] and restored["version"] == 1
    assert shop.served() == {1: True, 2: False}


def test_rollback_with_nothing_served_fails_clearly(tmp_path: Path) -> None:
    empty = Shop(tmp_path / "data")
    result = empty.run("rollback", "churn")
    assert result.exit_code == 1
    assert result.stderr == "error [no_served_model]: no churn model is served\n"


def test_an_unknown_version_cannot_be_promoted(shop: Shop) -> None:
    result = shop.run("promote", "999")
    assert result.exit_code == 1
    assert result.stderr == "error [model_not_found]: no model version 999\n"


def test_rescore_scores_stored_profiles_and_monitor_checks_them(
    shop: Shop, trained: dict[str, Any]
) -> None:
    from personify.profiles.events import view_event
    from personify.profiles.features import FeatureSet
    from personify.profiles.processor import ProfileProcessor
    from personify.settings import Settings
    from personify.store.database import open_database

    settings = Settings(data_dir=shop.data_dir)
    db = open_database(settings)
    try:
        stamp = format_timestamp(END)
        events = [
            view_event(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "userId": f"live-{n % 3}",
                    "messageId": f"live-{n}",
                    "timestamp": stamp,
                    "receivedAt": stamp,
                    "sourceId": "src",
                }
            )
            for n in range(9)
        ]
        ProfileProcessor(db, FeatureSet()).apply(events)
    finally:
        db.dispose()
    # the profiles were written with no model in the worker: a pass scores them
    assert shop.json("rescore")["scored"] == {"churn": 3}
    assert shop.json("rescore")["scored"] == {"churn": 0}
    first = shop.json("monitor")
    [check] = first["checks"]
    assert check["target"] == "churn" and check["version"] == trained["version"]
    assert check["users"] == 3 and check["featureDrift"] and "psi" in check["scoreDrift"]
    second = shop.json("monitor", "--history", "1")
    assert second["history"]["churn"][0]["checkedAt"] == check["checkedAt"]
