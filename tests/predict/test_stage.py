"""Real-time scoring: the worker's prediction stage re-scores a profile in the transaction that
changes it, swaps models on promotion and rollback, feeds segment conditions, and keeps going
when a served model cannot be used. Real SQLite state, real LightGBM models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock, format_timestamp
from personify.predict.learning import FeatureSpec, Model
from personify.predict.registry import ModelRegistry
from personify.predict.rescore import PredictionRescore
from personify.predict.stage import PredictionStage, explain
from personify.predict.targets import target
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.predictions import read_predictions
from personify.profiles.processor import ProfileProcessor
from personify.profiles.state import decode_state, state_text
from personify.profiles.tables import profiles
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage
from personify.segments.tables import segment_members
from personify.store.database import Database

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FEATURES = FeatureSet()
SPEC = FeatureSpec(("events_total", "recency_days"))


def churn_model(*, falling: bool) -> Model:
    """A real booster on two features: churn falls with events_total (or rises, when not
    ``falling``), so a more active user scores lower (or higher)."""
    rng = np.random.default_rng(7)
    events = rng.integers(1, 40, 4000).astype(float)
    recency = rng.uniform(0, 30, 4000)
    chance = 1 / (1 + np.exp((events - 10) / 3 if falling else -(events - 10) / 3))
    churned = (rng.uniform(size=4000) < chance).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "seed": 0},
        lgb.Dataset(np.column_stack([events, recency]), churned),
        num_boost_round=40,
    )
    return Model(
        target("churn"), SPEC, "churn", {"churn": booster}, prior={"churn_probability": 0.4}
    )


class World:
    """A state database whose worker processor runs the prediction and segment stages."""

    def __init__(self, db: Database, models_dir: Path) -> None:
        self.db = db
        self.clock = FrozenClock(T0)
        self.registry = ModelRegistry(db, models_dir, clock=self.clock)
        self.segments = SegmentRepository(db, clock=self.clock)
        self.predictions = PredictionStage(self.registry, FEATURES, clock=self.clock)
        stages = [self.predictions, SegmentStage(self.segments, FEATURES, clock=self.clock)]
        self.processor = ProfileProcessor(db, FEATURES, clock=self.clock, stages=stages)
        self.sent = 0

    def send(self, who: str, count: int = 1) -> None:
        """Apply ``count`` events of ``who`` in one batch."""
        batch = []
        for _ in range(count):
            self.sent += 1
            when = format_timestamp(self.clock.now() - timedelta(seconds=self.sent))
            data: dict[str, Any] = {
                "type": "track",
                "event": "Product Viewed",
                "userId": who,
                "messageId": f"m-{self.sent}",
                "timestamp": when,
                "receivedAt": when,
                "sourceId": "src",
            }
            batch.append(view_event(data))
        self.processor.apply(batch)

    def churn(self, who: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            return read_predictions(conn, [who])[who]["churn"]

    def register(self, model: Model) -> int:
        version = self.registry.register(
            model,
            as_of=T0,
            definitions="test",
            lineage_id=None,
            report={"kind": "churn"},
            status="kept",
        )
        return version.id


@pytest.fixture
def world(tmp_path: Path) -> World:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    return World(db, tmp_path / "models")


def test_nothing_is_written_while_no_model_is_served(world: World) -> None:
    world.register(churn_model(falling=True))
    world.send("ada", 3)
    with world.db.connect() as conn:
        assert read_predictions(conn, ["ada"]) == {}


def test_an_event_that_changes_the_features_changes_the_stored_probability(world: World) -> None:
    world.registry.promote(world.register(churn_model(falling=True)))
    world.send("ada")
    first = world.churn("ada")
    # one event is too little history: the population's prior, flagged, no reasons
    assert first["coldStart"] is True and first["probability"] == 0.4 and first["reasons"] == []
    world.send("ada", 2)
    second = world.churn("ada")
    assert second["coldStart"] is False and second["version"] == 1
    assert second["model"] == "churn:30d:*" and second["scoredAt"] == format_timestamp(T0)
    world.send("ada", 30)
    third = world.churn("ada")
    # more activity, lower churn (the model's planted direction), in the same batch's commit
    assert third["probability"] < second["probability"]
    # the worker stores the score; its reasons are worked out when asked, from the state
    assert "reasons" not in third
    with world.db.connect() as conn:
        state = decode_state(
            state_text(
                conn.execute(
                    sa.select(profiles.c.state).where(profiles.c.profile_id == "ada")
                ).scalar_one()
            )
        )
    explained = explain(world.registry, FEATURES, state, {"churn": third})["churn"]
    assert explained["probability"] == third["probability"]
    texts = [r["text"] for r in explained["reasons"]]
    assert texts and any(t.startswith("events in total: 33") for t in texts)
    assert all(("raises churn risk" in t) or ("lowers churn risk" in t) for t in texts)


def test_promotion_swaps_the_model_and_rollback_restores_the_previous_scores(
    world: World,
) -> None:
    first = world.register(churn_model(falling=True))
    world.registry.promote(first)
    world.send("ada", 30)
    before = world.churn("ada")
    world.registry.promote(world.register(churn_model(falling=False)))
    world.send("ada")
    swapped = world.churn("ada")
    assert swapped["version"] == 2 and swapped["probability"] > before["probability"]
    world.registry.rollback("churn")
    world.send("ada")
    restored = world.churn("ada")
    assert restored["version"] == 1
    # one more event barely moves a user with 31 of them: the old model's score is back
    assert restored["probability"] == pytest.approx(before["probability"], abs=0.05)


def test_segment_conditions_read_the_scores_of_the_same_batch(world: World) -> None:
    world.registry.promote(world.register(churn_model(falling=True)))
    world.segments.create(
        "at-risk", condition={"prediction": "churn.probability", "op": "gt", "value": 0.5}
    )
    world.send("bob", 3)
    assert world.churn("bob")["probability"] > 0.5
    with world.db.connect() as conn:
        m = segment_members.c
        members = set(
            conn.execute(
                sa.select(m.profile_id).where(m.segment_key == "at-risk", m.exited_at.is_(None))
            ).scalars()
        )
    assert members == {"bob"}
    world.send("bob", 40)
    assert world.churn("bob")["probability"] < 0.5
    with world.db.connect() as conn:
        left = conn.execute(
            sa.select(m.exited_at).where(m.segment_key == "at-risk", m.profile_id == "bob")
        ).scalar_one()
    assert left is not None


def test_a_served_model_that_cannot_be_read_is_reported_and_the_batch_goes_on(
    world: World, tmp_path: Path
) -> None:
    model_id = world.register(churn_model(falling=True))
    world.registry.promote(model_id)
    path = Path(world.registry.get(model_id).file)
    path.write_bytes(path.read_bytes().replace(b'"kind":"churn"', b'"kind":"chur!"'))
    # a new process: nothing loaded yet, so the changed file is read (and refused)
    fresh = World(world.db, tmp_path / "models")
    fresh.sent = 100
    fresh.send("cy", 3)
    value = fresh.churn("cy")
    assert value["status"] == "unavailable" and value["reason"] == "model_checksum_mismatch"
    assert "churn" in fresh.predictions.failures
    # the profile itself was stored: the batch committed
    with fresh.db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one() == 1


def test_rescoring_scores_profiles_that_did_not_change_after_a_promotion_or_as_scores_age(
    world: World,
) -> None:
    stage = SegmentStage(world.segments, FEATURES, clock=world.clock)
    rescore = PredictionRescore(
        world.db,
        world.registry,
        world.predictions,
        clock=world.clock,
        stale_after_s=86_400,
        after_scoring=lambda conn, rows: stage.evaluate_stored(
            conn, rows, world.clock.now(), reason="prediction"
        ),
    )
    world.segments.create(
        "at-risk", condition={"prediction": "churn.probability", "op": "gt", "value": 0.5}
    )
    world.send("ada", 3)
    world.send("bob", 40)
    # nothing served yet: nothing to score
    assert rescore.run().scored == {}
    first = world.register(churn_model(falling=True))
    world.registry.promote(first)
    # promoted after the profiles were written: only a pass scores them
    assert rescore.run().scored == {"churn": 2}
    assert world.churn("ada")["version"] == 1 and world.churn("bob")["version"] == 1
    assert rescore.run().scored == {"churn": 0}
    with world.db.connect() as conn:
        m = segment_members.c
        at_risk = set(
            conn.execute(
                sa.select(m.profile_id).where(m.segment_key == "at-risk", m.exited_at.is_(None))
            ).scalars()
        )
    assert at_risk == {"ada"}
    # a new version: every profile is scored again by it
    world.registry.promote(world.register(churn_model(falling=False)))
    assert rescore.run().scored == {"churn": 2}
    assert world.churn("bob")["version"] == 2
    # a day later every score is stale and is scored again, at the new time
    world.clock.advance(86_401)
    assert rescore.run().scored == {"churn": 2}
    assert world.churn("ada")["scoredAt"] == format_timestamp(world.clock.now())
