"""Popularity with time decay, overall and per group (a segment, a country): the baseline
every model must beat and the cold-start answer for users no model knows.

An item's popularity is the sum of its interactions' weights, each halved for every
``half_life_days`` its event is older than the newest arrival the model was fitted on. The
sum adds across partitions of the events (``personify.recommend.covisitation.DecayedCounts``
holds the same numbers in mergeable form).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from personify.recommend.interactions import FloatArray, IntArray, Interactions
from personify.recommend.ranking import Ranked, ScoringRecommender, top_k, without_zeros

DEFAULT_POPULARITY_HALF_LIFE_DAYS = 14.0


class Popularity(ScoringRecommender):
    """The same ranking for everyone: the items with the most (decayed, weighted)
    interactions, less what each user has seen."""

    name = "popularity"

    def __init__(self, *, half_life_days: float | None = DEFAULT_POPULARITY_HALF_LIFE_DAYS) -> None:
        super().__init__()
        self.half_life_days = half_life_days
        self.counts: FloatArray = np.zeros(0)
        self._per_user: sp.csr_matrix = sp.csr_matrix((0, 0))

    def _fit(self, interactions: Interactions) -> None:
        values = interactions.decayed_weights(interactions.latest_ms(), self.half_life_days)
        # per user too, so any grouping of users has its popularity without a refit
        self._per_user = interactions.matrix(values)
        self.counts = np.asarray(self._per_user.sum(axis=0), dtype=np.float64).ravel()

    def _scores(self, rows: IntArray) -> FloatArray:
        return without_zeros(np.tile(self.counts, (rows.shape[0], 1)))

    def _similarity(self, column: int) -> FloatArray:
        # popularity knows no likeness: the popular items are its answer for any item
        return without_zeros(self.counts.copy())

    def top(self, k: int) -> Ranked:
        """The ``k`` most popular items overall."""
        return self._ranked(without_zeros(self.counts.copy()), k)

    def top_by_group(self, groups: Mapping[str, str], k: int) -> dict[str, Ranked]:
        """The ``k`` most popular items among the users of each group (``groups``: user id
        -> group name); users the model was not fitted on are left out."""
        members: dict[str, list[int]] = {}
        for user, group in groups.items():
            row = self._user_rows.get(user)
            if row is not None:
                members.setdefault(group, []).append(row)
        result: dict[str, Ranked] = {}
        for group, rows in sorted(members.items()):
            counts = np.asarray(self._per_user[rows].sum(axis=0), dtype=np.float64).ravel()
            chosen = top_k(without_zeros(counts), k)
            result[group] = Ranked(
                tuple(self.item_ids[i] for i in chosen.tolist()),
                tuple(float(v) for v in counts[chosen].tolist()),
            )
        return result
