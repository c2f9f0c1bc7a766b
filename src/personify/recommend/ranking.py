"""The one small protocol every recommender follows, and the top-k machinery they share.

A recommender is fitted on ``Interactions``; then it ranks items for users it has seen
(``recommend``) and items like an item (``similar``). Every fitted recommender here scores a
user as one dense row over its items (``ScoringRecommender._scores``), so a serving index is
``recommend(every user, N)`` and ``similar(every item, N)``: arrays of ids and scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import scipy.sparse as sp

from personify.errors import NotFound, ValidationError
from personify.recommend.interactions import FloatArray, IntArray, Interactions

# users scored at once: bounds the dense (users x items) score block
_BATCH_USERS = 512


@dataclass(frozen=True, slots=True)
class Ranked:
    """Items best first, with the score each got (higher is better; scales differ by model)."""

    items: tuple[str, ...]
    scores: tuple[float, ...]


NOTHING = Ranked((), ())


class Recommender(Protocol):
    """Fit on interactions, then rank items for users and items like an item."""

    @property
    def name(self) -> str:
        """The recommender's name in evaluation results (``popularity``, ``ease``, ...)."""
        ...

    def fit(self, interactions: Interactions) -> None:
        """Learn from ``interactions`` (replacing anything learnt before)."""

    def recommend(
        self,
        users: Sequence[str],
        k: int,
        *,
        exclude_seen: bool = True,
        exclude: Mapping[str, Collection[str]] | None = None,
    ) -> list[Ranked]:
        """The top ``k`` items for each of ``users`` (nothing for a user it was not fitted
        on), without the items they interacted with in training when ``exclude_seen`` and
        without ``exclude[user]``."""
        ...

    def similar(self, item: str, k: int) -> Ranked:
        """The ``k`` items most like ``item`` (never ``item`` itself)."""
        ...


def top_k(scores: FloatArray, k: int) -> IntArray:
    """The indices of the ``k`` highest finite scores, best first (ties by lower index)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    if finite.size > k:
        values = scores[finite]
        # the k-th best value, then everything at least as good, so ties at the edge are kept
        # in index order rather than left to the partition's whims
        threshold = np.partition(values, finite.size - k)[finite.size - k]
        finite = finite[values >= threshold]
    order = np.lexsort((finite, -scores[finite]))
    chosen: IntArray = finite[order][:k].astype(np.int64)
    return chosen


class ScoringRecommender(ABC):
    """A recommender that scores every item for a user; subclasses say how (``_scores``)
    and which items are alike (``_similarity``). Scores of -inf mean "never recommend"."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.user_ids: tuple[str, ...] = ()
        self.item_ids: tuple[str, ...] = ()
        self._user_rows: dict[str, int] = {}
        self._item_columns: dict[str, int] = {}
        self._seen: sp.csr_matrix = sp.csr_matrix((0, 0))

    def fit(self, interactions: Interactions) -> None:
        """Learn from ``interactions``: their users and items become the model's."""
        self.user_ids = interactions.user_ids
        self.item_ids = interactions.item_ids
        self._user_rows = {u: i for i, u in enumerate(self.user_ids)}
        self._item_columns = {item: i for i, item in enumerate(self.item_ids)}
        self._seen = interactions.matrix()
        self._fit(interactions)

    @abstractmethod
    def _fit(self, interactions: Interactions) -> None:
        """Learn the model's parameters (users and items are already indexed)."""

    @abstractmethod
    def _scores(self, rows: IntArray) -> FloatArray:
        """The scores of every item (columns) for the users at ``rows``: a new array."""

    @abstractmethod
    def _similarity(self, column: int) -> FloatArray:
        """How alike every item is to the item at ``column``: a new array."""

    def recommend(
        self,
        users: Sequence[str],
        k: int,
        *,
        exclude_seen: bool = True,
        exclude: Mapping[str, Collection[str]] | None = None,
    ) -> list[Ranked]:
        """The top ``k`` items for each of ``users`` (``Recommender.recommend``)."""
        if k < 1:
            raise ValidationError("k must be at least 1", code="invalid_k")
        result = [NOTHING] * len(users)
        known = [(n, self._user_rows[u]) for n, u in enumerate(users) if u in self._user_rows]
        for start in range(0, len(known), _BATCH_USERS):
            batch = known[start : start + _BATCH_USERS]
            rows = np.array([row for _, row in batch], dtype=np.int64)
            scores = self._scores(rows)
            for line, (position, row) in enumerate(batch):
                values = scores[line]
                if exclude_seen:
                    seen = self._seen
                    values[seen.indices[seen.indptr[row] : seen.indptr[row + 1]]] = -np.inf
                if exclude is not None:
                    for item in exclude.get(users[position], ()):
                        column = self._item_columns.get(item)
                        if column is not None:
                            values[column] = -np.inf
                result[position] = self._ranked(values, k)
        return result

    def similar(self, item: str, k: int) -> Ranked:
        """The ``k`` items most like ``item``; raises ``NotFound`` for an item never seen."""
        column = self._item_columns.get(item)
        if column is None:
            raise NotFound(f"the item {item!r} is not in the {self.name} model")
        values = self._similarity(column)
        values[column] = -np.inf
        return self._ranked(values, k)

    def _ranked(self, values: FloatArray, k: int) -> Ranked:
        chosen = top_k(values, k)
        return Ranked(
            tuple(self.item_ids[i] for i in chosen.tolist()),
            tuple(float(v) for v in values[chosen].tolist()),
        )


def without_zeros(values: FloatArray) -> FloatArray:
    """``values`` with 0 (no evidence at all) as -inf, so nothing is ranked on no evidence."""
    values[values == 0] = -np.inf
    return values
