"""Durations tallied into fixed buckets by the code that measures them, in plain Python.

The collector, the stream worker and the decision engine count what they do in plain
attributes (ints, dicts, these tallies) and nothing else: no lock, no library call on their
paths. ``GET /metrics`` (``personify.api.metrics``) moves what changed into Prometheus'
histograms, whose buckets are the ones here, so a tally is a histogram's counts kept where
they are cheapest to keep.

A tally belongs to one process and is only ever added to; its counts are cumulative.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

__all__ = ["FRESHNESS_BUCKETS_S", "LATENCY_BUCKETS_S", "DurationTally"]

# request latencies: an ingest request is answered in about a millisecond, a decision in a
# few; the upper buckets catch a log or a database that stalls
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# from the collector's answer to the profile holding the event: the target is 200 ms p99,
# and a worker that falls behind shows up in the minutes
FRESHNESS_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)


class DurationTally:
    """Counts of durations by bucket (the last bucket is +Inf), and their sum in seconds.

    ``counts[i]`` counts the durations ``d`` with ``bounds[i-1] < d <= bounds[i]``, as a
    Prometheus bucket ``le=bounds[i]`` does before its counts are made cumulative."""

    __slots__ = ("_bounds", "counts", "total_s")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("bucket bounds must be a non-empty ascending sequence")
        self._bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self._bounds) + 1)
        self.total_s = 0.0

    @property
    def bounds(self) -> tuple[float, ...]:
        """The buckets' upper bounds, without the last (+Inf)."""
        return self._bounds

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect_left(self._bounds, seconds)] += 1
        self.total_s += seconds

    def observe_many(self, seconds: np.ndarray) -> None:
        """Count many durations at once (a batch's, as one vectorised pass)."""
        if not len(seconds):
            return
        found = np.bincount(
            np.searchsorted(self._bounds, seconds, side="left"), minlength=len(self.counts)
        )
        for index, count in enumerate(found.tolist()):
            if count:
                self.counts[index] += count
        self.total_s += float(seconds.sum())

    @property
    def count(self) -> int:
        """How many durations were counted."""
        return sum(self.counts)
