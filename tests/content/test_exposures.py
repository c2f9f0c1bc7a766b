"""Exposures kept for frequency caps, on a real SQLite file and a real PostgreSQL: the rows an exposure event
holds, keeping each (decision, item) once however often it is delivered, counts within a
window, and pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from personify.content.exposures import (
    exposure_counts,
    exposure_rows,
    prune_exposures,
    record_exposures,
)
from personify.store.database import Database
from tests.postgres import fresh_schema, postgres_database  # noqa: F401

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def event(decision: str, *items: str, profile: str = "p1") -> dict[str, object]:
    return {
        "properties": {
            "decisionId": decision,
            "profileId": profile,
            "placements": [
                {"id": "hero", "items": [{"id": item} for item in items]},
                {"id": "side", "items": [{"id": items[0]}]},  # never twice in one decision
            ],
        }
    }


def test_rows_of_an_exposure_event() -> None:
    rows = exposure_rows(event("d1", "a", "b"), NOW)
    assert [(r["item_id"], r["placement_id"]) for r in rows] == [("a", "hero"), ("b", "hero")]
    assert exposure_rows({"properties": {"decisionId": "d2", "profileId": None}}, NOW) == []
    assert exposure_rows({"properties": "nope"}, NOW) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return fresh_schema(request.getfixturevalue("postgres_database"))


def test_record_count_and_prune(state_url: str) -> None:
    db = Database(state_url)
    try:
        first = exposure_rows(event("d1", "a", "b"), NOW - timedelta(hours=30))
        second = exposure_rows(event("d2", "a"), NOW - timedelta(hours=2))
        assert record_exposures(db, first + second) == 3
        # the log delivered the same events again: nothing new
        assert record_exposures(db, first + second) == 0
        day = 86_400_000
        assert exposure_counts(db, "p1", {"a": day, "b": day}, NOW) == {"a": 1}
        assert exposure_counts(db, "p1", {"a": 2 * day, "b": 2 * day}, NOW) == {"a": 2, "b": 1}
        assert exposure_counts(db, "p2", {"a": day}, NOW) == {}
        assert prune_exposures(db, NOW, keep_days=1) == 2
        assert exposure_counts(db, "p1", {"a": 2 * day, "b": 2 * day}, NOW) == {"a": 1}
    finally:
        db.dispose()
