"""Item-to-item co-visitation: items viewed together, items bought together, with time decay.

The counts, as a stream stage keeps them (and as ``count_covisits`` computes them in one
pass): each user's last ``max_previous`` interactions of a kind are remembered; a new one
(in arrival order) is paired with each remembered one whose event time is within
``window_hours`` of it and that is another item. Each pair adds 1 to ``pairs[a, b]`` and to
``pairs[b, a]``, each interaction adds 1 to ``items[a]``, every increment decayed from its
event time (the later event's, for a pair) to the counts' reference time ``as_of_ms``:
``2 ** (-(as_of - t) / half_life)``.

Counts decayed to one reference time add: ``DecayedCounts.merge`` brings two to the later
reference time (multiplying the older by the decay between them) and sums them, so counts
kept per partition of users, or per day, combine exactly (it is associative and
commutative, up to rounding) as long as each reference time is at or after the events it
counts (an event dated after it is counted as if it happened at it, not boosted).

Likeness is cosine-normalised co-occurrence: ``pairs[a, b] / sqrt(items[a] * items[b])``,
so an item popular with everyone is not like everything. The recommender adds the kinds'
likeness with weights (bought-together says more than viewed-together), and scores a user's
items by their history (decayed weights) times that likeness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personify.errors import ValidationError
from personify.recommend.interactions import (
    FloatArray,
    IntArray,
    Interactions,
    decay,
)
from personify.recommend.ranking import ScoringRecommender, without_zeros

# which events make which kind of co-visit
DEFAULT_KINDS: Mapping[str, tuple[str, ...]] = {
    "viewed": ("Product Viewed", "Product Added"),
    "bought": ("Order Completed",),
}
# viewed together: in one visit (a day); bought together: by one customer within a month
DEFAULT_WINDOW_HOURS: Mapping[str, float] = {"viewed": 24.0, "bought": 24.0 * 30}
# a purchase together says more than a look together
DEFAULT_KIND_WEIGHTS: Mapping[str, float] = {"viewed": 1.0, "bought": 2.0}
DEFAULT_COVISIT_HALF_LIFE_DAYS = 30.0
# what the user touched lately weighs most in their recommendations, a month ago half as much
DEFAULT_HISTORY_HALF_LIFE_DAYS = 30.0
DEFAULT_MAX_PREVIOUS = 20
_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class DecayedCounts:
    """Per-item and per-pair counts of one kind, decayed to ``as_of_ms``; ``pairs`` is a
    symmetric ``len(item_ids)`` square sparse matrix."""

    item_ids: tuple[str, ...]
    items: FloatArray
    pairs: sp.csr_matrix
    as_of_ms: int
    half_life_days: float

    def decayed_to(self, as_of_ms: int) -> DecayedCounts:
        """The same counts with ``as_of_ms`` as reference time (later: smaller)."""
        age_days = (as_of_ms - self.as_of_ms) / 86_400_000
        factor = float(np.exp2(-age_days / self.half_life_days))
        return DecayedCounts(
            self.item_ids,
            self.items * factor,
            (self.pairs * factor).tocsr(),
            as_of_ms,
            self.half_life_days,
        )

    def aligned(self, item_ids: tuple[str, ...]) -> DecayedCounts:
        """The counts over ``item_ids`` (which holds every one of ours), zeros elsewhere."""
        position = {item: n for n, item in enumerate(item_ids)}
        moved = np.array([position[i] for i in self.item_ids], dtype=np.int64)
        size = len(item_ids)
        items = np.zeros(size)
        items[moved] = self.items
        coo = self.pairs.tocoo()
        pairs = sp.csr_matrix(
            (coo.data, (moved[coo.row], moved[coo.col])), shape=(size, size), dtype=np.float64
        )
        return DecayedCounts(item_ids, items, pairs, self.as_of_ms, self.half_life_days)

    def merge(self, other: DecayedCounts) -> DecayedCounts:
        """Both counts as one, at the later reference time of the two.

        Raises ``ValidationError`` when their half-lives differ (they would not add).
        """
        if other.half_life_days != self.half_life_days:
            raise ValidationError(
                "counts with different half-lives cannot be merged", code="invalid_merge"
            )
        as_of_ms = max(self.as_of_ms, other.as_of_ms)
        item_ids = tuple(sorted(set(self.item_ids) | set(other.item_ids)))
        mine = self.decayed_to(as_of_ms).aligned(item_ids)
        theirs = other.decayed_to(as_of_ms).aligned(item_ids)
        return DecayedCounts(
            item_ids,
            mine.items + theirs.items,
            (mine.pairs + theirs.pairs).tocsr(),
            as_of_ms,
            self.half_life_days,
        )

    def similarity(self) -> sp.csr_matrix:
        """Cosine-normalised co-occurrence: ``pairs[a, b] / sqrt(items[a] * items[b])``."""
        norm = np.sqrt(self.items)
        inverse = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        scale = sp.diags(inverse)
        similar: sp.csr_matrix = (scale @ self.pairs @ scale).tocsr()
        return similar


def count_covisits(
    interactions: Interactions,
    *,
    as_of_ms: int,
    half_life_days: float = DEFAULT_COVISIT_HALF_LIFE_DAYS,
    window_hours: float = 24.0,
    max_previous: int = DEFAULT_MAX_PREVIOUS,
    mask: npt.NDArray[np.bool_] | None = None,
) -> DecayedCounts:
    """The co-visit counts of ``interactions`` (the rows where ``mask`` holds), over all of
    their items, decayed to ``as_of_ms`` (the module docstring says how they are counted)."""
    if max_previous < 1 or window_hours <= 0:
        raise ValidationError(
            "max_previous must be at least 1 and window_hours positive", code="invalid_window"
        )
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(interactions))
    users, at_ms = interactions.users[rows], interactions.at_ms[rows]
    # each user's interactions in the order a stream stage would have applied them
    order = np.lexsort((at_ms, interactions.received_ms[rows], users))
    users, at_ms, items = users[order], at_ms[order], interactions.items[rows][order]
    size = interactions.item_count
    window_ms = window_hours * _MS_PER_HOUR
    firsts: list[IntArray] = []
    seconds: list[IntArray] = []
    values: list[FloatArray] = []
    for lag in range(1, max_previous + 1):
        if lag >= users.shape[0]:
            break
        same = users[lag:] == users[:-lag]
        if not same.any():
            break  # no user has this many interactions: none has more
        later, earlier = at_ms[lag:], at_ms[:-lag]
        paired = same & (np.abs(later - earlier) <= window_ms) & (items[lag:] != items[:-lag])
        weight = decay(as_of_ms - np.maximum(later, earlier)[paired], half_life_days)
        a, b = items[lag:][paired], items[:-lag][paired]
        firsts += [a, b]
        seconds += [b, a]
        values += [weight, weight]
    if firsts:
        pairs = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(firsts), np.concatenate(seconds))),
            shape=(size, size),
            dtype=np.float64,
        )
        pairs.sum_duplicates()
    else:
        pairs = sp.csr_matrix((size, size), dtype=np.float64)
    counts = np.bincount(items, weights=decay(as_of_ms - at_ms, half_life_days), minlength=size)
    return DecayedCounts(
        interactions.item_ids, counts.astype(np.float64), pairs, as_of_ms, half_life_days
    )


class CoVisitation(ScoringRecommender):
    """Items viewed and bought together with what the user recently touched."""

    name = "covisitation"

    def __init__(
        self,
        *,
        kinds: Mapping[str, Sequence[str]] = DEFAULT_KINDS,
        kind_weights: Mapping[str, float] = DEFAULT_KIND_WEIGHTS,
        window_hours: Mapping[str, float] = DEFAULT_WINDOW_HOURS,
        half_life_days: float = DEFAULT_COVISIT_HALF_LIFE_DAYS,
        history_half_life_days: float | None = DEFAULT_HISTORY_HALF_LIFE_DAYS,
        max_previous: int = DEFAULT_MAX_PREVIOUS,
    ) -> None:
        super().__init__()
        self.kinds = {kind: tuple(names) for kind, names in kinds.items()}
        self.kind_weights = dict(kind_weights)
        self.window_hours = dict(window_hours)
        self.half_life_days = half_life_days
        self.history_half_life_days = history_half_life_days
        self.max_previous = max_previous
        self.counts: dict[str, DecayedCounts] = {}
        self.likeness: sp.csr_matrix = sp.csr_matrix((0, 0))
        self._history: sp.csr_matrix = sp.csr_matrix((0, 0))

    def _fit(self, interactions: Interactions) -> None:
        as_of_ms = interactions.latest_ms()
        size = interactions.item_count
        likeness = sp.csr_matrix((size, size), dtype=np.float64)
        self.counts = {}
        for kind, names in self.kinds.items():
            codes = [n for n, name in enumerate(interactions.event_names) if name in names]
            counts = count_covisits(
                interactions,
                as_of_ms=as_of_ms,
                half_life_days=self.half_life_days,
                window_hours=self.window_hours.get(kind, 24.0),
                max_previous=self.max_previous,
                mask=np.isin(interactions.events, codes),
            )
            self.counts[kind] = counts
            likeness = likeness + self.kind_weights.get(kind, 1.0) * counts.similarity()
        self.likeness = likeness.tocsr()
        self._history = interactions.matrix(
            interactions.decayed_weights(as_of_ms, self.history_half_life_days)
        )

    def _scores(self, rows: IntArray) -> FloatArray:
        scores = np.asarray((self._history[rows] @ self.likeness).toarray(), dtype=np.float64)
        return without_zeros(scores)

    def _similarity(self, column: int) -> FloatArray:
        row = np.asarray(self.likeness[column].toarray(), dtype=np.float64).ravel()
        return without_zeros(row)

    def anchors(self, user: str, item: str) -> list[tuple[str, float]]:
        """Which of ``user``'s items made ``item`` a recommendation, and how much each
        contributed, largest first ("because you viewed X")."""
        row = self._user_rows.get(user)
        column = self._item_columns.get(item)
        if row is None or column is None:
            return []
        history = self._history[row]
        contributions = history.multiply(self.likeness[:, column].T).tocsr()
        found = [
            (self.item_ids[int(c)], float(v))
            for c, v in zip(contributions.indices, contributions.data, strict=True)
            if v > 0
        ]
        return sorted(found, key=lambda pair: (-pair[1], pair[0]))
