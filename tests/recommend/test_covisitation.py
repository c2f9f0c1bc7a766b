"""Co-visitation counts: the pairs a stream stage would count, decayed, and mergeable."""

from __future__ import annotations

import numpy as np
import pytest

from personify.errors import ValidationError
from personify.recommend.covisitation import DecayedCounts, count_covisits
from personify.recommend.interactions import Interactions

HOUR = 3_600_000
T0 = 1_700_000_000_000


def interactions(rows: list[tuple[str, str, int]], name: str = "Product Viewed") -> Interactions:
    """(user, item, event time) rows, received when they happened."""
    user_ids = tuple(sorted({u for u, _, _ in rows}))
    item_ids = tuple(sorted({i for _, i, _ in rows}))
    at = np.array([t for _, _, t in rows], dtype=np.int64)
    return Interactions(
        users=np.array([user_ids.index(u) for u, _, _ in rows], dtype=np.int64),
        items=np.array([item_ids.index(i) for _, i, _ in rows], dtype=np.int64),
        events=np.zeros(len(rows), dtype=np.int64),
        at_ms=at,
        received_ms=at.copy(),
        weights=np.ones(len(rows)),
        user_ids=user_ids,
        item_ids=item_ids,
        event_names=(name,),
    )


def pair(counts: DecayedCounts, a: str, b: str) -> float:
    ids = counts.item_ids
    return float(counts.pairs[ids.index(a), ids.index(b)])


def test_pairs_within_the_window_decayed_from_the_later_event() -> None:
    found = interactions(
        [
            ("u", "a", T0),
            ("u", "b", T0 + HOUR),
            ("u", "c", T0 + 30 * HOUR),  # more than a day after a and b: no pair with them
            ("u", "a", T0 + 31 * HOUR),  # pairs with c, not with itself
            ("v", "b", T0 + 31 * HOUR),  # another user: pairs with nobody
        ]
    )
    counts = count_covisits(found, as_of_ms=T0 + 31 * HOUR, half_life_days=1.0, window_hours=24)
    assert pair(counts, "a", "b") == pytest.approx(2 ** (-30 / 24))
    assert pair(counts, "b", "a") == pair(counts, "a", "b")
    assert pair(counts, "a", "c") == pytest.approx(1.0)
    assert pair(counts, "b", "c") == 0.0
    assert counts.pairs.diagonal().sum() == 0.0
    assert counts.items.tolist() == pytest.approx(
        [2 ** (-31 / 24) + 1, 2 ** (-30 / 24) + 1, 2 ** (-1 / 24)]
    )
    # only the last max_previous are remembered: c's pair with a is kept, b's with a is not
    short = count_covisits(
        found, as_of_ms=T0 + 31 * HOUR, half_life_days=1.0, window_hours=48, max_previous=1
    )
    assert pair(short, "a", "c") == pytest.approx(1.0)
    assert pair(short, "b", "c") == pytest.approx(2 ** (-1 / 24))
    assert pair(short, "a", "b") == pytest.approx(2 ** (-30 / 24))
    with pytest.raises(ValidationError):
        count_covisits(found, as_of_ms=T0, max_previous=0)


def test_similarity_is_cosine_normalised() -> None:
    found = interactions([("u", "a", T0), ("u", "b", T0), ("v", "a", T0), ("w", "a", T0)])
    counts = count_covisits(found, as_of_ms=T0, half_life_days=10.0)
    likeness = counts.similarity()
    # pairs 1, a seen 3 times, b once: 1 / sqrt(3 * 1)
    assert likeness[0, 1] == pytest.approx(1 / np.sqrt(3))


def _dense(counts: DecayedCounts, item_ids: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    aligned = counts.aligned(item_ids)
    return aligned.items, aligned.pairs.toarray()


def test_counts_of_parts_merge_into_the_counts_of_the_whole() -> None:
    rng = np.random.default_rng(3)
    rows = [
        (f"u{rng.integers(6)}", f"i{rng.integers(8)}", T0 + int(rng.integers(0, 72)) * HOUR)
        for _ in range(120)
    ]
    whole = interactions(rows)
    end = T0 + 80 * HOUR
    expected = count_covisits(whole, as_of_ms=end, half_life_days=2.0)
    # each partition of users counted on its own, at its own reference time (each at or
    # after its last event, as a stream stage's would be)
    parts = []
    for users, extra in ((("u0", "u1"), 0), (("u2", "u3"), 5 * HOUR), (("u4", "u5"), HOUR)):
        mask = np.isin(np.array(whole.user_ids)[whole.users], users)
        part = whole.select(mask)
        as_of = int(part.at_ms.max()) + extra
        parts.append(count_covisits(part, as_of_ms=as_of, half_life_days=2.0))
    left = parts[0].merge(parts[1]).merge(parts[2])
    right = parts[2].merge(parts[0].merge(parts[1]))
    ids = expected.item_ids
    for merged in (left, right):
        assert merged.as_of_ms == max(p.as_of_ms for p in parts)
        merged = merged.decayed_to(end)
        items, pairs = _dense(merged, ids)
        assert items == pytest.approx(expected.items)
        assert pairs == pytest.approx(expected.pairs.toarray())
    with pytest.raises(ValidationError):
        parts[0].merge(count_covisits(whole, as_of_ms=end, half_life_days=3.0))


def test_decaying_to_a_later_time_halves_per_half_life() -> None:
    counts = count_covisits(
        interactions([("u", "a", T0), ("u", "b", T0)]), as_of_ms=T0, half_life_days=1.0
    )
    later = counts.decayed_to(T0 + 48 * HOUR)
    assert later.items.tolist() == pytest.approx([0.25, 0.25])
    assert later.pairs[0, 1] == pytest.approx(0.25)
