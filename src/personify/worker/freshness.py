"""Freshness of the last few minutes: how long applied events took from the log's
acknowledgement to their profiles, kept so that a percentile covers a recent window.

``WorkerStats.freshness`` (``personify.tally``) is cumulative since the process started,
which is what Prometheus wants (it takes the rates itself). A page that says "p99 now" needs
the recent window instead, at any event rate and in fixed memory: so the durations are
counted into one histogram per ``slot_s`` seconds, over log-spaced buckets about 4% apart,
and a slot older than ``window_s`` is reused. A percentile reads as the upper bound of the
bucket it falls in, so it is never understated and overstated by at most one bucket; a
duration of an hour or more reads as an hour.

The stream worker counts into it after each committed batch (``observe_many``); the console
and ``GET /metrics`` read ``summary``. Both run on the worker's event loop, so there is no
lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

__all__ = ["FreshnessSummary", "RecentFreshness"]

# 1 ms to an hour in 384 log-spaced steps: neighbouring bounds are 4% apart
_BOUNDS_S: Final = np.geomspace(0.001, 3600.0, num=384)


@dataclass(frozen=True, slots=True)
class FreshnessSummary:
    """Percentiles of the freshness over the last ``window_s`` seconds (None without events)."""

    window_s: float
    count: int
    p50_s: float | None
    p99_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: milliseconds, rounded to a tenth."""
        return {
            "windowS": self.window_s,
            "count": self.count,
            "p50Ms": None if self.p50_s is None else round(self.p50_s * 1000.0, 1),
            "p99Ms": None if self.p99_s is None else round(self.p99_s * 1000.0, 1),
        }


class RecentFreshness:
    """Durations of the last ``window_s`` seconds, by ``slot_s`` slot, as bucket counts."""

    __slots__ = ("_counts", "_slot_s", "_slots", "window_s")

    def __init__(self, *, window_s: float = 300.0, slot_s: float = 10.0) -> None:
        if slot_s <= 0 or window_s < slot_s:
            raise ValueError("need 0 < slot_s <= window_s")
        self.window_s = float(window_s)
        self._slot_s = float(slot_s)
        slots = math.ceil(window_s / slot_s)
        # which slot (``now // slot_s``) each row holds; -1 for never used
        self._slots = np.full(slots, -1, dtype=np.int64)
        # the last column counts durations beyond the highest bound
        self._counts = np.zeros((slots, len(_BOUNDS_S) + 1), dtype=np.int64)

    def observe_many(self, seconds: np.ndarray, *, now: float) -> None:
        """Count the durations of events applied at ``now`` (wall-clock seconds)."""
        if not len(seconds):
            return
        slot = int(now // self._slot_s)
        row = slot % len(self._slots)
        if self._slots[row] != slot:
            self._slots[row] = slot
            self._counts[row] = 0
        buckets = np.searchsorted(_BOUNDS_S, seconds, side="left")
        self._counts[row] += np.bincount(buckets, minlength=self._counts.shape[1])

    def _recent(self, now: float) -> np.ndarray:
        slot = int(now // self._slot_s)
        live = (self._slots > slot - len(self._slots)) & (self._slots <= slot)
        summed: np.ndarray = self._counts[live].sum(axis=0)
        return summed

    def quantile(self, q: float, *, now: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) of the window's durations in seconds, or None."""
        return _quantile(self._recent(now), q)

    def summary(self, *, now: float) -> FreshnessSummary:
        """The window's count, median and 99th percentile."""
        counts = self._recent(now)
        return FreshnessSummary(
            window_s=self.window_s,
            count=int(counts.sum()),
            p50_s=_quantile(counts, 0.5),
            p99_s=_quantile(counts, 0.99),
        )


def _quantile(counts: np.ndarray, q: float) -> float | None:
    if not 0.0 < q <= 1.0:
        raise ValueError("q must be in (0, 1]")
    total = int(counts.sum())
    if total == 0:
        return None
    # the nearest-rank definition: the smallest value with at least q of the counts at or below
    rank = max(1, math.ceil(q * total))
    index = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    return float(_BOUNDS_S[min(index, len(_BOUNDS_S) - 1)])
