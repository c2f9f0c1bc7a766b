"""Hit rate, recall and NDCG at k on hand-worked cases, and the choice of model."""

from __future__ import annotations

import math

import pytest

from personify.errors import ValidationError
from personify.recommend.evaluation import choose, mean_scores, score_user


def test_one_user_by_hand() -> None:
    # truth {b, d}; hits at ranks 1 and 3 (0-based): DCG = 1/log2(3) + 1/log2(5),
    # IDCG = 1/log2(2) + 1/log2(3)
    scores = score_user(["a", "b", "c", "d"], {"b", "d"}, k=4)
    assert scores.hit == 1.0
    assert scores.recall == 1.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert scores.ndcg == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert scores.ndcg == pytest.approx(0.6509209)


def test_only_the_top_k_count() -> None:
    # k = 2: only a, b are looked at; truth {b, d}: one hit at rank 1
    scores = score_user(["a", "b", "c", "d"], {"b", "d"}, k=2)
    assert (scores.hit, scores.recall) == (1.0, 0.5)
    assert scores.ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_more_truth_than_k_caps_the_ideal() -> None:
    # 3 relevant items, k = 1, a hit at the top: perfect NDCG, recall 1/3
    scores = score_user(["x"], {"x", "y", "z"}, k=1)
    assert scores.ndcg == 1.0
    assert scores.recall == pytest.approx(1 / 3)


def test_misses_and_empty_rankings_score_zero() -> None:
    assert score_user(["a", "b"], {"c"}, k=2).ndcg == 0.0
    assert score_user([], {"c"}, k=2).hit == 0.0
    with pytest.raises(ValidationError):
        score_user(["a"], set(), k=1)


def test_means_over_every_test_user() -> None:
    truths = {"u1": {"a"}, "u2": {"b", "c"}, "u3": {"d"}}
    rankings = {"u1": ["a", "x"], "u2": ["x", "c"]}  # u3 got nothing
    means = mean_scores(rankings, truths, k=2)
    assert means["hit_rate"] == pytest.approx(2 / 3)
    assert means["recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    u2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert means["ndcg"] == pytest.approx((1 + u2 + 0) / 3)
    assert mean_scores({}, {}, k=2) == {"hit_rate": 0.0, "recall": 0.0, "ndcg": 0.0}


def test_the_best_learned_model_is_chosen() -> None:
    results = {
        "popularity": {"ndcg": 0.9, "recall": 0.9},
        "ease": {"ndcg": 0.3, "recall": 0.2},
        "als": {"ndcg": 0.3, "recall": 0.4},
        "bpr": {"ndcg": 0.1, "recall": 0.9},
    }
    # popularity is not a learned model; ALS and EASE tie on NDCG, ALS has the better recall
    assert choose(results) == "als"
    with pytest.raises(ValidationError):
        choose({"popularity": {"ndcg": 1.0, "recall": 1.0}})
