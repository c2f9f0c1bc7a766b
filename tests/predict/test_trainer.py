"""The learned churn and lifetime-value models: they beat the BG/NBD (+ Gamma-Gamma) baseline
on a shop with planted drivers, learn nothing received after the cut-off, pass the gate only
when they beat the baseline and the served version, fall back to held-out users on a short
history, give cold profiles the prior, and survive their file."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personify.cli.shop_history import generate_history
from personify.clock import format_timestamp
from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.predict.learning import checksum, dump_model, load_model
from personify.predict.registry import ModelRegistry
from personify.predict.targets import target
from personify.predict.trainer import ModelTrainer, TrainingRun, serve_scores
from personify.predict.training import FeatureJob
from personify.profiles.features import FeatureSet
from personify.store.database import Database
from tests.lake.conftest import normalized, write_lake

END = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
# the backtest's cut-off: the 30-day label window after it is observed in full
BACKTEST_AS_OF = END - timedelta(days=31)
# the small shop's cut-off for training (a training run needs only what was received by T)
T = END - timedelta(days=40)
CHURN = target("churn", 30)
CLV = target("clv", 30)
# the quality test's shop: the smallest size whose margins held over seeds 11, 12 and 13 (at
# 1000 customers seed 12's churn AUC was 0.9554 vs 0.9547)
QUALITY_CUSTOMERS = 1500
QUALITY_SEED = 11
# ROC-AUC by which the learned churn model beats BG/NBD in the backtest; measured at 1500
# customers: seed 11 0.9393 vs 0.9263, seed 12 0.9557 vs 0.9517, seed 13 0.9463 vs 0.9344
CHURN_AUC_MARGIN = 0.003
# revenue MAE (EUR per user over 30 days) by which the learned CLV model beats BG/NBD +
# Gamma-Gamma; measured at 1500 customers: seed 11 65.3 vs 70.9, seed 12 60.4 vs 64.8,
# seed 13 56.6 vs 61.9
CLV_MAE_MARGIN = 3.0


def _moment(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def shop_events(
    customers: int, seed: int, *, days: int = 150, late_share: float = 0.0
) -> list[dict[str, Any]]:
    """The generated shop's events as the collector logged them, in arrival order: each
    received a second after it happened, except ``late_share`` of them three days late."""
    history = generate_history(END, customers=customers, days=days, seed=seed, sale_at=0.35)
    rng = random.Random(seed)
    arrivals = []
    for raw in history.events:
        delay = timedelta(days=3) if rng.random() < late_share else timedelta(seconds=1)
        arrivals.append((_moment(raw["timestamp"]) + delay, raw))
    arrivals.sort(key=lambda pair: pair[0])
    return [normalized(raw, received_at=arrival) for arrival, raw in arrivals]


def _received(event: dict[str, Any]) -> datetime:
    return _moment(event["receivedAt"])


@dataclass(frozen=True, slots=True)
class SmallShop:
    """A 300-customer shop in two lakes: everything, and only what was received by ``T``."""

    full: Lake
    known: Lake
    late_before_t: int


@pytest.fixture(scope="module")
def quality_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    events = shop_events(QUALITY_CUSTOMERS, QUALITY_SEED)
    return write_lake(tmp_path_factory.mktemp("quality") / "lake", events)


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory: pytest.TempPathFactory) -> SmallShop:
    events = shop_events(300, 5, late_share=0.05)
    # one profile with a single event, received at T (so the truncated lake reaches T): too
    # little history for a model
    events.append(
        normalized(
            {
                "type": "track",
                "userId": "solo",
                "event": "Product Viewed",
                "messageId": "solo-1",
                "timestamp": format_timestamp(T),
            },
            received_at=T,
        )
    )
    events.sort(key=_received)
    folder = tmp_path_factory.mktemp("small")
    known = [e for e in events if _received(e) <= T]
    late = sum(1 for e in events if _received(e) > T >= _moment(e["timestamp"]))
    return SmallShop(
        full=write_lake(folder / "full", events, batch=5000),
        known=write_lake(folder / "known", known),
        late_before_t=late,
    )


@pytest.fixture(scope="module")
def churn_run(small_shop: SmallShop) -> TrainingRun:
    """A churn model trained at T on the small shop's full lake, not registered."""
    return ModelTrainer(FeatureJob(small_shop.full, FeatureSet())).train(
        CHURN, as_of=T, register=False
    )


@pytest.fixture
def registry_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    yield db
    db.dispose()


# -- quality ---------------------------------------------------------------------------------


def test_the_learned_models_beat_the_baseline_in_the_backtest(quality_lake: Lake) -> None:
    trainer = ModelTrainer(FeatureJob(quality_lake, FeatureSet()))

    churn = trainer.evaluate(CHURN, as_of=BACKTEST_AS_OF).result
    assert churn["validation"]["method"] == "next_window"
    assert churn["users"] >= 0.8 * QUALITY_CUSTOMERS
    model_auc, baseline_auc = churn["model"]["roc_auc"], churn["baseline"]["roc_auc"]
    assert model_auc >= baseline_auc + CHURN_AUC_MARGIN, (model_auc, baseline_auc)

    clv = trainer.evaluate(CLV, as_of=BACKTEST_AS_OF).result
    model_mae, baseline_mae = clv["model"]["revenue_mae"], clv["baseline"]["revenue_mae"]
    assert model_mae <= baseline_mae - CLV_MAE_MARGIN, (model_mae, baseline_mae)
    assert "gammaGamma" in clv["baselineParameters"]


# -- no leakage ------------------------------------------------------------------------------


def test_nothing_received_after_t_changes_the_model(
    small_shop: SmallShop, churn_run: TrainingRun
) -> None:
    # the full lake holds events that happened by T but arrived after it, and everything later
    assert small_shop.late_before_t >= 20
    truncated = ModelTrainer(FeatureJob(small_shop.known, FeatureSet())).train(
        CHURN, as_of=T, register=False
    )
    table, _, _ = FeatureJob(small_shop.known, FeatureSet()).build(T)
    assert table.num_rows > 200
    full_scores, _ = serve_scores(churn_run.model, table)
    known_scores, _ = serve_scores(truncated.model, table)
    np.testing.assert_array_equal(full_scores.churn_probability, known_scores.churn_probability)
    assert churn_run.report["model"] == truncated.report["model"]
    assert churn_run.report["baseline"] == truncated.report["baseline"]


# -- the gate --------------------------------------------------------------------------------


def test_a_version_is_served_only_when_it_beats_the_baseline_and_the_served_one(
    small_shop: SmallShop, registry_db: Database, tmp_path: Path
) -> None:
    registry = ModelRegistry(registry_db, tmp_path / "models")
    trainer = ModelTrainer(FeatureJob(small_shop.full, FeatureSet(), db=registry_db), registry)

    first = trainer.train(CHURN, as_of=T)
    gate = first.report["gate"]
    assert gate["metric"] == "roc_auc" and gate["candidate"] > gate["baseline"]
    assert "current" not in first.report
    assert gate["decision"] == "promoted" and gate["reasons"] == []
    assert first.promoted and first.version is not None
    assert first.version.number == 1 and first.version.served
    assert first.version.lineage_id is not None

    # the same cut-off again: an identical model, compared with the served one on the same
    # validation users, does not beat it and is kept
    second = trainer.train(CHURN, as_of=T)
    table, _, _ = FeatureJob(small_shop.full, FeatureSet()).build(T)
    again, _ = serve_scores(second.model, table)
    served_scores, _ = serve_scores(first.model, table)
    np.testing.assert_array_equal(again.churn_probability, served_scores.churn_probability)
    current = second.report["current"]
    assert current["version"] == 1 and current["id"] == first.version.id
    # the served version was fit on these validation labels: it is judged by its own
    # validation, never by an in-sample score
    assert current["comparison"] == "its_own_validation"
    assert current["metrics"] == first.report["model"]
    assert not second.promoted and second.version is not None
    assert second.version.number == 2 and second.version.status == "kept"
    assert second.report["gate"]["decision"] == "kept"
    assert second.report["gate"]["reasons"] == ["it does not beat the served version's roc_auc"]
    served = registry.served_for(CHURN)
    assert served is not None and served.number == 1

    # the served version scores every profile at T; the single-event profile gets the prior
    scored = trainer.score(CHURN, as_of=T)
    rows = {r["user_id"]: r for r in scored.to_pylist()}
    assert rows["solo"]["cold_start"] is True
    assert rows["solo"]["churn_probability"] == first.model.prior["churn_probability"]
    assert set(scored.column("model_version").to_pylist()) == {1}

    # on 300 customers the learned CLV model validates worse than BG/NBD + Gamma-Gamma
    # (revenue MAE 94.3 vs 80.5): it is registered, kept, and nothing is served for CLV
    clv = trainer.train(CLV, as_of=T)
    gate = clv.report["gate"]
    assert gate["candidate"] > gate["baseline"]
    assert gate["decision"] == "kept"
    assert gate["reasons"] == ["it does not beat the baseline's revenue_mae"]
    assert not clv.promoted and clv.version is not None
    assert clv.version.number == 1 and clv.version.status == "kept"
    assert registry.served_for(CLV) is None
    assert registry.served_for(CHURN) == served


# -- held-out validation ---------------------------------------------------------------------


def test_a_short_history_validates_on_held_out_users(tmp_path: Path) -> None:
    # 50 days of history: T - 2H lies before the lake's first event
    events = shop_events(300, 7, days=50)
    lake = write_lake(tmp_path / "lake", events)
    as_of = END - timedelta(days=1)
    run = ModelTrainer(FeatureJob(lake, FeatureSet())).train(CHURN, as_of=as_of, register=False)
    validation = run.report["validation"]
    assert validation["method"] == "held_out_users"
    assert "does not reach back two horizons" in validation["note"]
    assert "20%" in validation["note"]
    assert 0 < validation["validationUsers"] < validation["fitRows"]
    assert run.report["model"]["roc_auc"] > 0.5


# -- cold start ------------------------------------------------------------------------------


def test_a_profile_with_one_event_gets_the_prior(
    small_shop: SmallShop, churn_run: TrainingRun
) -> None:
    table, _, _ = FeatureJob(small_shop.full, FeatureSet()).build(T)
    ids = table.column("user_id").to_pylist()
    solo = ids.index("solo")
    assert table.column("events_total")[solo].as_py() == 1
    scores, cold = serve_scores(churn_run.model, table)
    prior = churn_run.model.prior["churn_probability"]
    assert cold[solo] and cold.sum() == 1
    assert scores.churn_probability is not None
    assert scores.churn_probability[solo] == prior
    warm = np.delete(scores.churn_probability, solo)
    assert np.all((warm >= 0) & (warm <= 1)) and len(np.unique(warm)) > 10


# -- the model file --------------------------------------------------------------------------


def test_a_model_file_round_trips_and_a_changed_byte_is_refused(
    small_shop: SmallShop, churn_run: TrainingRun
) -> None:
    table, _, _ = FeatureJob(small_shop.known, FeatureSet()).build(T)
    model = churn_run.model
    data = dump_model(model)
    loaded = load_model(data, checksum(data))
    x = model.spec.matrix(table)
    np.testing.assert_array_equal(
        loaded.predict(x).churn_probability, model.predict(x).churn_probability
    )
    assert loaded.spec == model.spec and loaded.prior == model.prior
    assert dump_model(loaded) == data

    changed = bytearray(data)
    position = data.index(b'"prior"') + 3
    changed[position] ^= 0x01
    with pytest.raises(ValidationError) as refused:
        load_model(bytes(changed), checksum(data))
    assert refused.value.code == "model_checksum_mismatch"
