"""Machine-learned segments, the computation: planted groups are recovered, automatic k finds
them, cluster keys stay stable across reruns, and each cluster is described."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from personify.errors import ValidationError
from personify.segments.clustering import (
    ClusteringSpec,
    ClusterRun,
    fit_clustering,
    fit_shards,
    spec_from_dict,
)

FEATURES = ("spend", "orders", "sessions", "recency", "pages")
# four kinds of users, in original units
CENTRES = np.array(
    [
        [900.0, 12.0, 40.0, 3.0, 200.0],  # big spenders, very active
        [60.0, 1.0, 3.0, 90.0, 10.0],  # lapsed
        [250.0, 4.0, 20.0, 10.0, 120.0],  # regulars
        [30.0, 1.0, 25.0, 5.0, 300.0],  # browsers who rarely buy
    ]
)
SPREAD = np.array([60.0, 1.5, 4.0, 4.0, 20.0])


def planted(
    per_group: int, *, seed: int = 0, centres: Any = CENTRES
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(centres)), per_group)
    rows = centres[groups] + rng.normal(size=(len(groups), len(FEATURES))) * SPREAD
    order = rng.permutation(len(groups))
    return rows[order], groups[order]


@pytest.mark.parametrize("algorithm", ["auto", "kmeans", "minibatch-kmeans", "gmm", "hdbscan"])
def test_planted_groups_are_recovered(algorithm: Any) -> None:
    rows, truth = planted(500)
    k: Any = 4 if algorithm in ("kmeans", "minibatch-kmeans", "gmm") else "auto"
    run = fit_clustering(rows, ClusteringSpec(FEATURES, algorithm=algorithm, k=k))
    found = [run.keys.index(key) if key is not None else -1 for key in run.labels]
    assert adjusted_rand_score(truth, found) >= 0.9
    assert run.k == 4
    assert run.silhouette is not None and run.silhouette > 0.5
    assert run.davies_bouldin is not None and run.davies_bouldin < 1.0
    assert sum(c.size for c in run.clusters) == sum(1 for key in run.labels if key is not None)


def test_automatic_k_keeps_every_candidates_score() -> None:
    rows, _ = planted(400)
    run = fit_clustering(rows, ClusteringSpec(FEATURES, k="auto", k_range=(2, 8)))
    assert sorted(run.candidates) == list(range(2, 9))
    assert run.k == 4 == max(run.candidates, key=run.candidates.__getitem__)


def test_each_cluster_is_described_in_original_units() -> None:
    rows, _ = planted(500)
    run = fit_clustering(rows, ClusteringSpec(FEATURES, k=4))
    spenders = max(run.clusters, key=lambda c: c.centroid["spend"])
    assert spenders.centroid["spend"] == pytest.approx(900, rel=0.05)
    assert spenders.centroid["orders"] == pytest.approx(12, rel=0.1)
    assert spenders.size == 500
    top = spenders.distinguishing[0]
    assert top["effectSize"] > 2
    assert spenders.name.startswith("high ")
    lapsed = max(run.clusters, key=lambda c: c.centroid["recency"])
    assert "high recency" in lapsed.name
    # a user is assigned to the nearest cluster, as the worker will between runs
    assert run.assign(CENTRES[:1])[0] == spenders.key


def test_keys_are_stable_across_reruns_on_the_same_data() -> None:
    rows, _ = planted(500)
    first = fit_clustering(rows, ClusteringSpec(FEATURES, k="auto", seed=1))
    second = fit_clustering(
        rows,
        ClusteringSpec(FEATURES, k="auto", seed=2),
        previous=first,
        previous_labels=dict(enumerate(first.labels)),
    )
    kept = np.mean([a == b for a, b in zip(first.labels, second.labels, strict=True)])
    assert kept >= 0.99
    assert second.changes["appeared"] == [] and second.changes["disappeared"] == []
    assert second.changes["split"] == [] and second.changes["merged"] == []


def test_keys_are_stable_with_ten_percent_new_users() -> None:
    rows, _ = planted(500, seed=3)
    first = fit_clustering(rows, ClusteringSpec(FEATURES, k="auto", seed=1))
    newcomers, _ = planted(50, seed=4)
    both = np.vstack([rows, newcomers])
    second = fit_clustering(both, ClusteringSpec(FEATURES, k="auto", seed=5), previous=first)
    same = [a == b for a, b in zip(first.labels, second.labels[: len(rows)], strict=True)]
    assert np.mean(same) >= 0.95


def test_a_new_group_appears_and_a_split_is_reported() -> None:
    rows, _ = planted(400, centres=CENTRES[:3])
    first = fit_clustering(rows, ClusteringSpec(FEATURES, k=3))
    # the regulars become two kinds (cheap and dear), and a fourth kind arrives
    regulars = CENTRES[2]
    centres = np.vstack(
        [
            CENTRES[0],
            CENTRES[1],
            regulars - np.array([150.0, 0, 0, 0, 0]),
            regulars + np.array([350.0, 0, 0, 0, 0]),
            CENTRES[3],
        ]
    )
    again, _ = planted(400, centres=centres)
    # the same users: the regulars are split between the cheap and the dear kind
    labels_before = dict(enumerate(first.assign(again)))
    second = fit_clustering(
        again, ClusteringSpec(FEATURES, k=5), previous=first, previous_labels=labels_before
    )
    assert len(second.changes["kept"]) >= 2
    assert second.changes["appeared"]
    assert any(len(s["into"]) >= 2 for s in second.changes["split"])


def test_bad_specs_and_matrices_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        ClusteringSpec(FEATURES, algorithm="dbscan")  # type: ignore[arg-type]
    assert caught.value.code == "invalid_algorithm"
    with pytest.raises(ValidationError):
        ClusteringSpec(FEATURES, k=1)
    with pytest.raises(ValidationError):
        ClusteringSpec(FEATURES, k=51)
    for field, value in (("sampleSize", 0), ("seed", -5), ("seed", 2**32)):
        with pytest.raises(ValidationError) as caught:
            spec_from_dict({"features": list(FEATURES), field: value})
        assert caught.value.details["field"] == field
    with pytest.raises(ValidationError):
        ClusteringSpec(())
    with pytest.raises(ValidationError) as caught:
        fit_clustering(np.zeros((10, 2)), ClusteringSpec(FEATURES))
    assert caught.value.code == "invalid_matrix"
    bad = np.ones((10, len(FEATURES)))
    bad[0, 0] = np.inf
    with pytest.raises(ValidationError):
        fit_clustering(bad, ClusteringSpec(FEATURES))


def test_a_missing_value_counts_as_the_features_mean() -> None:
    rows, truth = planted(300)
    holes = rows.copy()
    holes[::7, 2] = np.nan  # sessions unknown for one user in seven
    run = fit_clustering(holes, ClusteringSpec(FEATURES, k=4))
    found = [run.keys.index(key) for key in run.labels if key is not None]
    assert adjusted_rand_score(truth, found) >= 0.9
    assert run.mean[2] == pytest.approx(np.nanmean(holes[:, 2]))
    assert run.assign(np.full((1, len(FEATURES)), np.nan))[0] in run.keys


def test_shards_give_the_run_one_matrix_gives() -> None:
    rows, _ = planted(300)
    whole = fit_clustering(rows, ClusteringSpec(FEATURES, k=4, algorithm="kmeans"))
    parts: list[list[str | None]] = [[], [], []]
    shards = np.array_split(rows, 3)
    run = fit_shards(
        shards,
        ClusteringSpec(FEATURES, k=4, algorithm="kmeans"),
        on_labels=lambda i, clusters, keys: parts[i].extend(keys[c] for c in clusters.tolist()),
    )
    assert [len(p) for p in parts] == [len(s) for s in shards]
    assert [key for part in parts for key in part] == whole.labels
    assert np.allclose(run.centroids, whole.centroids)
    assert [c.to_dict() for c in run.clusters] == [c.to_dict() for c in whole.clusters]


def test_a_stored_model_assigns_as_the_run_did() -> None:
    rows, _ = planted(200)
    for algorithm in ("kmeans", "gmm"):
        run = fit_clustering(
            rows, ClusteringSpec(FEATURES, k=4, algorithm=algorithm, pca_components=3)
        )
        again = ClusterRun.from_model(run.spec, run.model())
        assert again.assign(rows) == [key for key in run.labels]
