"""RFM: the score and cell rules, and a run over a real lake whose cells the backfill, the
worker and the sweep keep, checked against figures computed from the raw events."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock, format_timestamp
from personify.errors import Conflict, ValidationError
from personify.lake.warehouse import StateProfiles, Warehouse
from personify.profiles.events import MS_PER_DAY, datetime_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.segments.backfill import SegmentBackfill
from personify.segments.repository import SegmentRepository
from personify.segments.rfm import RFM_CELLS, RfmModel, cell_of, rfm_key
from personify.segments.rfm_runner import RfmRunner
from personify.segments.stage import SegmentStage
from personify.segments.sweep import SegmentSweep
from personify.segments.tables import segment_members
from personify.store.database import Database
from tests.lake.conftest import T0, normalized, write_lake

FEATURES = FeatureSet()

# the documented grid, row by row: R = 5 … 1, F = 1 … 5
GRID = {
    5: ["new_customers", "new_customers", "loyal", "champions", "champions"],
    4: ["new_customers", "new_customers", "loyal", "champions", "champions"],
    3: ["promising", "promising", "loyal", "loyal", "loyal"],
    2: ["hibernating", "hibernating", "at_risk", "at_risk", "at_risk"],
    1: ["lost", "lost", "at_risk", "at_risk", "cannot_lose"],
}


def test_every_score_pair_falls_in_its_documented_cell() -> None:
    for r, cells in GRID.items():
        for f, cell in enumerate(cells, start=1):
            assert cell_of(r, f) == cell, (r, f)
    assert {cell_of(r, f) for r in range(1, 6) for f in range(1, 6)} == set(RFM_CELLS)


def test_scores_count_the_cut_points_below_the_figure() -> None:
    model = RfmModel(1, T0, 10, (2.0, 5.0, 10.0, 30.0), (1.0, 2.0, 3.0, 5.0), (10, 50, 90, 200))
    assert model.scores(0.5, 9, 500) == (5, 5, 5)
    assert model.scores(2.0, 1, 10) == (5, 1, 1)  # at a cut point: not below it
    assert model.scores(2.1, 1.5, 10.5) == (4, 2, 2)
    assert model.scores(45.0, 3, 100) == (1, 3, 4)
    # the recency score drops just after the days pass the next cut point
    last = datetime_ms(T0)
    assert model.next_recency_change_ms(last, last + MS_PER_DAY) == last + 2 * MS_PER_DAY + 1
    assert model.next_recency_change_ms(last, last + 31 * MS_PER_DAY) is None


class Shop:
    """Buyers' orders in a real lake and a real state database, as the worker applied them."""

    def __init__(self, tmp_path: Path) -> None:
        rng = random.Random(5)
        self.clock = FrozenClock(T0)
        self.db = Database(f"sqlite:///{tmp_path / 'state.db'}")
        self.repository = SegmentRepository(self.db, clock=self.clock)
        self.stage = SegmentStage(self.repository, FEATURES, clock=self.clock)
        self.processor = ProfileProcessor(self.db, FEATURES, clock=self.clock, stages=[self.stage])
        self.orders: dict[str, list[tuple[int, float]]] = {}
        events: list[dict[str, Any]] = []
        for n in range(60):
            user = f"u{n:02d}"
            for k in range(rng.choice([1, 1, 2, 3, 5, 8])):
                at = T0 - timedelta(days=rng.uniform(0, 120), minutes=k)
                total = round(rng.uniform(5, 300), 2)
                raw = {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "messageId": f"{user}-{k}",
                    "timestamp": format_timestamp(at),
                    "properties": {"total": total},
                }
                events.append(normalized(raw, received_at=T0))
                self.orders.setdefault(user, []).append((datetime_ms(at), total))
        # browsers without orders are in no cell
        for n in range(10):
            raw = {
                "type": "track",
                "event": "Product Viewed",
                "anonymousId": f"a{n}",
                "messageId": f"view-{n}",
                "timestamp": format_timestamp(T0 - timedelta(days=1)),
            }
            events.append(normalized(raw, received_at=T0))
        self.lake = write_lake(tmp_path / "lake", events)
        self.processor.apply([view_event(e) for e in events])

    def figures(self, at_ms: int) -> dict[str, tuple[float, float, float]]:
        return {
            user: (
                (at_ms - max(ts for ts, _ in orders)) / MS_PER_DAY,
                float(len(orders)),
                sum(total for _, total in orders),
            )
            for user, orders in self.orders.items()
        }

    def cells(self) -> dict[str, str]:
        with self.db.connect() as conn:
            m = segment_members.c
            rows = conn.execute(
                sa.select(m.profile_id, m.segment_key).where(
                    m.exited_at.is_(None), m.segment_key.like("rfm-%")
                )
            ).all()
        found: dict[str, str] = {}
        for profile_id, key in rows:
            assert profile_id not in found, f"{profile_id} is in two cells"
            found[str(profile_id)] = str(key)
        return found


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    built = Shop(tmp_path)
    yield built
    built.db.dispose()


def test_a_run_scores_every_buyer_and_the_cells_follow_the_rules(shop: Shop) -> None:
    runner = RfmRunner(shop.db, shop.repository, clock=shop.clock)
    with Warehouse(shop.lake, profiles=StateProfiles(shop.db)) as warehouse:
        result = runner.run(warehouse)
    model = result.model
    figures = shop.figures(datetime_ms(T0))
    assert model.buyers == len(figures) == 60
    assert model.lake_version is not None
    for cuts, column in zip(
        (model.recency_days, model.frequency, model.monetary),
        zip(*figures.values(), strict=True),
        strict=True,
    ):
        expected = np.quantile(np.asarray(column), [0.2, 0.4, 0.6, 0.8])
        assert np.allclose(cuts, expected, atol=1e-5)
    # every cell is a segment; a user cannot edit or delete one, nor take the prefix
    listed = {d.key for d in shop.repository.definitions()}
    assert {rfm_key(cell) for cell in RFM_CELLS} <= listed
    with pytest.raises(Conflict):
        shop.repository.archive("rfm-champions")
    with pytest.raises(ValidationError):
        shop.repository.create("rfm-mine", condition={"segment": "rfm-lost"})
    shop.repository.create("big-spenders-at-risk", condition={"segment": "rfm-at_risk"})

    SegmentBackfill(shop.db, shop.stage, clock=shop.clock).run()

    def expected_cells(at_ms: int) -> dict[str, str]:
        return {
            user: rfm_key(cell_of(*model.scores(*figs)[:2]))
            for user, figs in shop.figures(at_ms).items()
        }

    assert shop.cells() == expected_cells(datetime_ms(T0))
    assert len(set(shop.cells().values())) >= 5

    # time alone lowers recency scores: the sweep moves buyers when they cross a cut point
    shop.clock.advance(timedelta(days=20).total_seconds())
    SegmentSweep(shop.db, shop.stage, clock=shop.clock).sweep()
    later = expected_cells(datetime_ms(T0) + 20 * MS_PER_DAY)
    assert later != expected_cells(datetime_ms(T0))
    assert shop.cells() == later

    # and a new order is scored by the worker at once
    buyer = min(later, key=lambda u: (later[u] != "rfm-lost", u))
    when = shop.clock.now()
    shop.processor.apply(
        [
            view_event(
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": buyer,
                    "messageId": "fresh-order",
                    "timestamp": format_timestamp(when),
                    "receivedAt": format_timestamp(when),
                    "properties": {"total": 20.0},
                }
            )
        ]
    )
    shop.orders[buyer].append((datetime_ms(when), 20.0))
    assert shop.cells()[buyer] == expected_cells(datetime_ms(when))[buyer]
    assert shop.cells()[buyer] != "rfm-lost"
