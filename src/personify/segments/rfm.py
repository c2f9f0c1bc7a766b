"""RFM: recency, frequency and monetary scores for every buyer, and the classic named cells.

**The figures** of a buyer (a profile with at least one ``Order Completed``):

* recency: days since the last order;
* frequency: the number of orders;
* monetary: the revenue of every order (``revenue``, else ``total``, as the ``revenue``
  feature and the warehouse read it).

**A run** (``personify segments rfm``, ``POST /v1/rfm/runs``, and daily in ``personify
serve``) computes the figures of every buyer over the lake (``fact_events``, users as the
worker's canonical profiles) and cuts each into quintiles: the 20th, 40th, 60th and 80th
percentiles, kept with the run (``rfm_runs``, with the lake version it read). A score is 1
to 5: for frequency and monetary, 1 plus the number of cut points below the value; for
recency, 5 minus the number of cut points below the days (the most recent buyers score 5).

**Between runs** the worker scores each buyer it touches against the newest run's cut
points, from the profile's state (the last ``Order Completed``, and the ``orders`` and
``revenue`` features' all-time values), so the scores stay current; and a buyer's recency
score drops with time alone, so the sweep re-scores it when it crosses a cut point.

**The cells**, by R and F score (first match; M is reported, not used by a cell):

=================  ==========================  =========================================
cell               rule                        meaning
=================  ==========================  =========================================
champions          R >= 4 and F >= 4           bought recently and often
cannot_lose        R = 1 and F = 5             bought very often, not for a long time
loyal              R >= 3 and F >= 3           buy often, fairly recently
at_risk            R <= 2 and F >= 3           bought often, not lately
new_customers      R >= 4 and F <= 2           first orders, recently
promising          R = 3 and F <= 2            few orders, a while ago
hibernating        R = 2 and F <= 2            few orders, long ago
lost               R = 1 and F <= 2            few orders, longest ago
=================  ==========================  =========================================

Every (R, F) pair falls in exactly one cell. Each cell is a segment, ``rfm-<cell>``
(``rfm-champions`` …), listed by ``GET /v1/segments`` and usable in conditions like any
other (``{"segment": "rfm-at_risk"}``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import sqlalchemy as sa

from personify.profiles.events import MS_PER_DAY
from personify.profiles.state import ProfileState
from personify.segments.tables import rfm_runs
from personify.store.database import Database, aware

__all__ = [
    "ORDER_EVENT",
    "RFM_CELLS",
    "RFM_PREFIX",
    "RfmModel",
    "RfmRuns",
    "cell_of",
    "model_from_figures",
    "profile_figures",
    "rfm_key",
]

RFM_PREFIX = "rfm-"
ORDER_EVENT = "Order Completed"
RFM_CELLS = (
    "champions",
    "cannot_lose",
    "loyal",
    "at_risk",
    "new_customers",
    "promising",
    "hibernating",
    "lost",
)
_QUANTILES = (0.2, 0.4, 0.6, 0.8)
_encode = msgspec.json.encode
_decode = msgspec.json.decode

# the figures of every buyer, by canonical user; epoch milliseconds of the last order
RFM_QUERY = f"""
SELECT user_key,
       epoch_ms(max(timestamp)) AS last_order_ms,
       count(*) AS frequency,
       coalesce(sum(revenue), 0) AS monetary
FROM fact_events
WHERE type = 'track' AND event = '{ORDER_EVENT}' AND user_key IS NOT NULL
GROUP BY user_key
"""


def rfm_key(cell: str) -> str:
    """The segment key of an RFM cell."""
    return RFM_PREFIX + cell


def cell_of(r: int, f: int) -> str:
    """The cell of an R and F score (module docstring)."""
    if r >= 4 and f >= 4:
        return "champions"
    if r == 1 and f == 5:
        return "cannot_lose"
    if r >= 3 and f >= 3:
        return "loyal"
    if f >= 3:
        return "at_risk"
    if r >= 4:
        return "new_customers"
    if r == 3:
        return "promising"
    if r == 2:
        return "hibernating"
    return "lost"


@dataclass(frozen=True, slots=True)
class RfmModel:
    """One run's cut points (four each, ascending) and what it read."""

    run_id: int
    computed_at: datetime
    buyers: int
    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    lake_version: int | None = None

    def scores(
        self, recency_days: float, frequency: float, monetary: float
    ) -> tuple[int, int, int]:
        """The (R, F, M) scores of a buyer's figures."""
        r = 5 - bisect.bisect_left(self.recency_days, recency_days)
        f = 1 + bisect.bisect_left(self.frequency, frequency)
        m = 1 + bisect.bisect_left(self.monetary, monetary)
        return r, f, m

    def next_recency_change_ms(self, last_order_ms: int, at_ms: int) -> int | None:
        """When the recency score of a buyer whose last order was at ``last_order_ms`` next
        drops (after ``at_ms``): when its days pass the next cut point."""
        days = (at_ms - last_order_ms) / MS_PER_DAY
        for cut in self.recency_days:
            if cut >= days:
                # bisect_left: the score drops once the days exceed the cut point
                return last_order_ms + int(cut * MS_PER_DAY) + 1
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /v1/rfm``."""
        return {
            "run": self.run_id,
            "computedAt": self.computed_at.isoformat(),
            "buyers": self.buyers,
            "lakeVersion": self.lake_version,
            "cutPoints": {
                "recencyDays": list(self.recency_days),
                "frequency": list(self.frequency),
                "monetary": list(self.monetary),
            },
            "cells": [rfm_key(cell) for cell in RFM_CELLS],
        }


def _cuts(values: np.ndarray[Any, Any]) -> tuple[float, ...]:
    if values.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return tuple(round(float(q), 6) for q in np.quantile(values, _QUANTILES))


def model_from_figures(
    last_order_ms: Sequence[int],
    frequency: Sequence[float],
    monetary: Sequence[float],
    *,
    at_ms: int,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The quintile cut points (recency days, frequency, monetary) of every buyer's figures."""
    last = np.asarray(last_order_ms, dtype=np.float64)
    recency = np.maximum(at_ms - last, 0.0) / MS_PER_DAY
    return (
        _cuts(recency),
        _cuts(np.asarray(frequency, dtype=np.float64)),
        _cuts(np.asarray(monetary, dtype=np.float64)),
    )


def profile_figures(
    state: ProfileState, features: dict[str, Any], at_ms: int
) -> tuple[float, float, float, int] | None:
    """A buyer's (recency days, frequency, monetary, last order ms) from its state and its
    ``features`` section; ``None`` for a profile without orders."""
    last = state.last_events.get(ORDER_EVENT)
    if last is None:
        return None
    orders = features.get("orders")
    revenue = features.get("revenue")
    frequency = orders.get("all") if isinstance(orders, dict) else None
    monetary = revenue.get("all") if isinstance(revenue, dict) else None
    if not isinstance(frequency, int | float):
        return None
    money = float(monetary) if isinstance(monetary, int | float) else 0.0
    return max(at_ms - last.ts, 0) / MS_PER_DAY, float(frequency), money, last.ts


class RfmRuns:
    """The runs' cut points in the state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def save(
        self,
        conn: sa.Connection,
        *,
        computed_at: datetime,
        buyers: int,
        cuts: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]],
        lake_version: int | None,
    ) -> int:
        """Record a run; returns its id."""
        recency, frequency, monetary = cuts
        result = conn.execute(
            rfm_runs.insert().values(
                computed_at=computed_at,
                buyers=buyers,
                cut_points=_encode(
                    {"recencyDays": recency, "frequency": frequency, "monetary": monetary}
                ).decode(),
                lake_version=lake_version,
            )
        )
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    def newest(self, conn: sa.Connection) -> RfmModel | None:
        """The newest run, if any."""
        row = conn.execute(sa.select(rfm_runs).order_by(rfm_runs.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        cuts = _decode(row.cut_points)
        return RfmModel(
            run_id=int(row.id),
            computed_at=aware(row.computed_at),  # type: ignore[arg-type]
            buyers=int(row.buyers),
            recency_days=tuple(float(x) for x in cuts["recencyDays"]),
            frequency=tuple(float(x) for x in cuts["frequency"]),
            monetary=tuple(float(x) for x in cuts["monetary"]),
            lake_version=int(row.lake_version) if row.lake_version is not None else None,
        )

    def current(self) -> RfmModel | None:
        """The newest run, read with a connection of its own."""
        with self._db.connect() as conn:
            return self.newest(conn)
