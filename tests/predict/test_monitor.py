"""Monitoring: feature and score drift against a model's training, realised performance of a
cohort once its horizon has passed (outcomes read from a real lake), alerts, the checks'
history, and which served versions are due for retraining."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from personify.clock import format_timestamp
from personify.predict.features import flatten_document
from personify.predict.learning import Model
from personify.predict.monitor import ModelMonitor, MonitorThresholds, retraining_due
from personify.predict.trainer import monitoring_reference
from personify.profiles.events import datetime_ms
from personify.profiles.state import decode_state, evaluate_profile, state_text
from personify.profiles.tables import profiles
from personify.store.database import Database
from tests.lake.conftest import normalized, write_lake
from tests.predict.test_stage import FEATURES, SPEC, T0, World, churn_model


def register_with_reference(world: World, model: Model, trained_on: np.ndarray) -> int:
    """Register and promote ``model`` with a training report whose monitoring reference is
    ``trained_on`` (rows of events_total, recency_days) and validation AUC 0.8."""
    version = world.registry.register(
        model,
        as_of=T0,
        definitions="test",
        lineage_id=None,
        report={
            "kind": "churn",
            "model": {"roc_auc": 0.8},
            "monitoring": monitoring_reference(model, trained_on, trained_on),
        },
        status="kept",
    )
    world.registry.promote(version.id)
    return version.id


def monitor_of(world: World, tmp_path: Path, lake: Any = None) -> ModelMonitor:
    return ModelMonitor(
        world.db,
        world.registry,
        FEATURES,
        tmp_path / "models",
        lake=lake,
        clock=world.clock,
        thresholds=MonitorThresholds(psi_threshold=0.25),
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(Database(f"sqlite:///{tmp_path / 'state.db'}"), tmp_path / "models")


def test_users_like_the_training_rows_raise_no_drift_alert(world: World, tmp_path: Path) -> None:
    # the reference: the very same users, sent the same way into another state database
    twin = World(Database(f"sqlite:///{tmp_path / 'twin.db'}"), tmp_path / "twin-models")
    for number in range(40):
        twin.send(f"u{number}", 2 + number % 4)
    at_ms = datetime_ms(T0)
    with twin.db.connect() as conn:
        states = conn.execute(sa.select(profiles.c.state)).scalars().all()
    trained_on = np.vstack(
        [
            SPEC.row(
                flatten_document(evaluate_profile(decode_state(state_text(s)), FEATURES, at_ms)),
                at_ms,
            )
            for s in states
        ]
    )
    register_with_reference(world, churn_model(falling=True), trained_on)
    for number in range(40):
        world.send(f"u{number}", 2 + number % 4)
    [check] = monitor_of(world, tmp_path).check()
    assert check["users"] == 40 and check["version"] == 1
    assert check["featureDrift"] == {"events_total": 0.0, "recency_days": 0.0}
    assert check["scoreDrift"]["psi"] == 0.0
    assert not [a for a in check["alerts"] if a["kind"] in ("feature_drift", "score_drift")]
    assert check["scoreDrift"]["users"] == 40 and 0 <= check["scoreDrift"]["mean"] <= 1


def test_a_shifted_population_alerts_and_the_checks_are_kept(world: World, tmp_path: Path) -> None:
    # trained on very active users; scoring users with two events each
    trained_on = np.column_stack([np.arange(500) % 11 + 30.0, np.zeros(500)])
    register_with_reference(world, churn_model(falling=True), trained_on)
    for number in range(30):
        world.send(f"u{number}", 2)
    monitor = monitor_of(world, tmp_path)
    [check] = monitor.check()
    kinds = {(a["kind"], a.get("feature")) for a in check["alerts"]}
    assert ("feature_drift", "events_total") in kinds
    assert ("score_drift", None) in kinds and check["scoreDrift"]["psi"] > 0.25
    assert monitor.history("churn")[0]["checkedAt"] == format_timestamp(T0)
    # the version is new: drift alone does not retrain it within a day
    due = retraining_due(world.registry, [check], interval_s=7 * 86_400, now=T0)
    assert due == []
    later = T0 + timedelta(days=2)
    [(version, reason)] = retraining_due(world.registry, [check], interval_s=7 * 86_400, now=later)
    assert reason == "drift" and version.number == 1
    [(_, reason)] = retraining_due(world.registry, [], interval_s=86_400, now=later)
    assert reason == "schedule"


def test_a_cohort_is_scored_against_what_its_users_did_once_its_horizon_has_passed(
    world: World, tmp_path: Path
) -> None:
    trained_on = np.column_stack([np.arange(1, 41, dtype=float), np.zeros(40)])
    register_with_reference(world, churn_model(falling=True), trained_on)
    # ada is very active (low churn score), bob and cy barely (high)
    world.send("ada", 35)
    world.send("bob", 3)
    world.send("cy", 3)
    horizon = timedelta(days=30)

    def track(user: str, number: int, days: float) -> dict[str, Any]:
        moment = T0 + timedelta(days=days)
        raw = {
            "type": "track",
            "event": "Page Viewed",
            "userId": user,
            "messageId": f"after-{number}",
            "timestamp": format_timestamp(moment),
        }
        return normalized(raw, received_at=moment)

    # ada comes back in the horizon, bob and cy do not; a late event marks the lake observed
    lake = write_lake(
        tmp_path / "lake", [track("ada", 1, 3), track("ada", 2, 20), track("zed", 3, 31)]
    )
    monitor = monitor_of(world, tmp_path, lake)
    first = monitor.check()[0]
    assert first["realised"] == []  # the cohort is kept, its horizon has not passed
    cohorts = list((tmp_path / "models" / "cohorts" / "churn").glob("*.parquet"))
    assert len(cohorts) == 1
    world.clock.advance((horizon + timedelta(days=1)).total_seconds())
    second = monitor.check()[0]
    [cohort] = second["realised"]
    assert cohort["asOf"] == format_timestamp(T0) and cohort["modelId"] == 1
    metrics = cohort["metrics"]
    assert metrics["users"] == 3 and metrics["churn_rate"] == pytest.approx(2 / 3)
    # the model ranked ada (who stayed) below bob and cy (who left)
    assert metrics["roc_auc"] == 1.0
    assert not [a for a in second["alerts"] if a["kind"] == "realised_auc"]
    # each cohort is judged once
    assert monitor.check()[0]["realised"] == []


def test_a_realised_auc_well_below_validation_alerts(world: World, tmp_path: Path) -> None:
    trained_on = np.column_stack([np.arange(1, 41, dtype=float), np.zeros(40)])
    register_with_reference(world, churn_model(falling=True), trained_on)
    world.send("ada", 35)
    world.send("bob", 3)
    moment = T0 + timedelta(days=5)
    # bob (scored likely to churn) came back; ada (scored loyal) did not: AUC 0
    events = [
        normalized(
            {
                "type": "track",
                "event": "Page Viewed",
                "userId": user,
                "messageId": f"m-{user}",
                "timestamp": format_timestamp(at),
            },
            received_at=at,
        )
        for user, at in (("bob", moment), ("zed", T0 + timedelta(days=40)))
    ]
    lake = write_lake(tmp_path / "lake", events)
    monitor = monitor_of(world, tmp_path, lake)
    monitor.check()
    world.clock.advance(35 * 86_400)
    alerts = monitor.check()[0]["alerts"]
    [alert] = [a for a in alerts if a["kind"] == "realised_auc"]
    assert alert["validation"] == 0.8 and alert["realised"] == 0.0


def test_a_served_model_that_cannot_be_read_alerts(world: World, tmp_path: Path) -> None:
    model_id = register_with_reference(
        world, churn_model(falling=True), np.column_stack([np.ones(10), np.zeros(10)])
    )
    path = Path(world.registry.get(model_id).file)
    path.write_bytes(path.read_bytes() + b" ")
    fresh = World(world.db, tmp_path / "models")
    [check] = monitor_of(fresh, tmp_path).check()
    assert check["alerts"] == [{"kind": "model_unavailable", "reason": "model_checksum_mismatch"}]
