"""Machine-learned segments: fitting a clustering run, keeping cluster ids stable across runs,
and describing each cluster.

This module is the computation, on a feature matrix (rows are users, columns the features a
clustering names); storing runs, scheduling them and assigning users in the worker build on
it. A run:

1. **Standardises** each feature (mean 0, standard deviation 1; a constant feature stays 0),
   and optionally projects onto principal components (``pca``).
2. **Chooses k** when asked (``k="auto"``): every candidate in ``k_range`` is fitted on a
   sample and scored by its silhouette on that sample; the best wins, and every candidate's
   score is kept with the run.
3. **Fits** the algorithm on every row: ``kmeans``, ``minibatch-kmeans``, ``gmm`` (Gaussian
   mixture, full covariance), ``hdbscan`` (density-based: k is found, not given, and rows in
   no dense region are noise, label -1), or ``auto`` (k-means up to 50,000 rows, mini-batch
   k-means above). Quality: the silhouette (on a sample) and the Davies-Bouldin index.
4. **Matches** the new clusters to the previous run's (``previous``): the Hungarian algorithm
   (Kuhn 1955, scipy's ``linear_sum_assignment``) pairs clusters at the least total distance
   between centroids, both in this run's standardised space; a pair farther apart than
   ``max_match_distance`` is not a match. A matched cluster keeps its key (and so its
   segment); an unmatched new one gets a fresh key. With both runs' labels of the same users,
   the run also reports which previous clusters split (their users now mostly in two or more
   clusters) or merged (two or more previous clusters now mostly in one).
5. **Describes** every cluster: its size, its centroid in original units, and the features
   that set it apart most, by effect size (Cohen's d of the cluster against everyone else,
   with the pooled standard deviation); its automatic name is built from the two strongest
   ("high spend, low sessions").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import HDBSCAN, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture

from personify.errors import ValidationError

__all__ = [
    "ALGORITHMS",
    "ClusterDescription",
    "ClusterRun",
    "ClusteringSpec",
    "fit_clustering",
]

Algorithm = Literal["auto", "kmeans", "minibatch-kmeans", "gmm", "hdbscan"]
ALGORITHMS: tuple[str, ...] = ("auto", "kmeans", "minibatch-kmeans", "gmm", "hdbscan")
Matrix = np.ndarray[Any, np.dtype[np.float64]]
Labels = np.ndarray[Any, np.dtype[np.int64]]
# above this many rows, "auto" fits mini-batch k-means (bounded memory, one pass per batch)
_FULL_KMEANS_ROWS = 50_000
NOISE = -1


@dataclass(frozen=True, slots=True)
class ClusteringSpec:
    """What to fit: the features' names (the matrix's columns), the algorithm, k, options."""

    features: tuple[str, ...]
    algorithm: Algorithm = "auto"
    k: int | Literal["auto"] = "auto"
    k_range: tuple[int, int] = (2, 10)
    pca_components: int | None = None
    sample_size: int = 10_000
    seed: int = 0
    # in standardised units: farther apart than this, two centroids are not the same cluster
    max_match_distance: float = 1.5

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValidationError(
                f"unknown algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}",
                code="invalid_algorithm",
            )
        if not self.features:
            raise ValidationError("a clustering needs at least one feature", code="no_features")
        low, high = self.k_range
        if self.k != "auto" and (not isinstance(self.k, int) or self.k < 2):
            raise ValidationError("k is a whole number of at least 2, or auto", code="invalid_k")
        if low < 2 or high < low:
            raise ValidationError("k_range is (low, high) with 2 <= low <= high", code="invalid_k")


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    """One cluster of a run: its key, size, centroid (original units) and what sets it apart."""

    key: str
    size: int
    centroid: dict[str, float]
    distinguishing: list[dict[str, Any]]
    name: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a cluster in a run's report."""
        return {
            "key": self.key,
            "size": self.size,
            "centroid": self.centroid,
            "distinguishing": self.distinguishing,
            "name": self.name,
        }


@dataclass(slots=True)
class ClusterRun:
    """A fitted run: how to assign a row (``assign``), each row's cluster key, the quality
    metrics, every k candidate's score, the clusters, and what changed since the last run."""

    spec: ClusteringSpec
    mean: Matrix
    scale: Matrix
    components: Matrix | None
    centroids: Matrix  # in the (standardised, projected) space ``assign`` measures in
    keys: list[str]  # the key of each centroid's cluster
    labels: list[str | None]  # each row's cluster key (None: noise)
    k: int
    silhouette: float | None
    davies_bouldin: float | None
    candidates: dict[int, float] = field(default_factory=dict)
    clusters: list[ClusterDescription] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)

    def project(self, rows: Matrix) -> Matrix:
        """Rows in the space the centroids are in (standardised, then projected)."""
        standard = (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale
        return standard @ self.components.T if self.components is not None else standard

    def assign(self, rows: Matrix) -> list[str]:
        """The key of the nearest centroid for each row (how the worker places a user)."""
        points = self.project(rows)
        distances = ((points[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return [self.keys[i] for i in distances.argmin(axis=1).tolist()]

    def centroids_original(self) -> Matrix:
        """The centroids in the features' original units."""
        standard = (
            self.centroids @ self.components if self.components is not None else self.centroids
        )
        result: Matrix = standard * self.scale + self.mean
        return result


def _standardise(matrix: Matrix) -> tuple[Matrix, Matrix, Matrix]:
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return (matrix - mean) / scale, mean, scale


def _sample(rows: int, size: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if rows <= size:
        return np.arange(rows)
    return np.sort(rng.choice(rows, size=size, replace=False))


def _kmeans(algorithm: str, k: int, seed: int, rows: int) -> KMeans | MiniBatchKMeans:
    if algorithm == "minibatch-kmeans" or (algorithm == "auto" and rows > _FULL_KMEANS_ROWS):
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=4)


def _fit_labels(algorithm: str, k: int, seed: int, points: Matrix) -> tuple[Labels, Matrix]:
    """Each row's cluster number (-1: noise) and the centroids, for one algorithm."""
    if algorithm == "gmm":
        mixture = GaussianMixture(n_components=k, random_state=seed, covariance_type="full")
        labels = mixture.fit_predict(points)
        return labels.astype(np.int64), np.asarray(mixture.means_, dtype=np.float64)
    if algorithm == "hdbscan":
        labels = HDBSCAN(min_cluster_size=max(5, len(points) // 100), copy=True).fit_predict(points)
        found = sorted(set(labels.tolist()) - {NOISE})
        centroids = np.array([points[labels == c].mean(axis=0) for c in found])
        renumber = {c: i for i, c in enumerate(found)}
        mapped = np.array([renumber.get(int(c), NOISE) for c in labels], dtype=np.int64)
        return mapped, centroids.reshape(len(found), points.shape[1])
    model = _kmeans(algorithm, k, seed, len(points))
    labels = model.fit_predict(points)
    return labels.astype(np.int64), np.asarray(model.cluster_centers_, dtype=np.float64)


def _choose_k(
    spec: ClusteringSpec, points: Matrix, rng: np.random.Generator
) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette on a sample, and every candidate's score."""
    sample = points[_sample(len(points), spec.sample_size, rng)]
    low, high = spec.k_range
    high = min(high, len(sample) - 1)
    scores: dict[int, float] = {}
    for k in range(low, high + 1):
        labels, _ = _fit_labels(
            "gmm" if spec.algorithm == "gmm" else "kmeans", k, spec.seed, sample
        )
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = round(float(silhouette_score(sample, labels, random_state=spec.seed)), 6)
    if not scores:
        return low, scores
    return max(scores, key=lambda k: (scores[k], -k)), scores


def _match(
    previous: ClusterRun,
    centroids: Matrix,
    project: Callable[[Matrix], Matrix],
    max_distance: float,
) -> dict[int, str]:
    """New cluster index → previous key, by the Hungarian algorithm on centroid distances in
    this run's space (previous centroids taken through original units)."""
    before = project(previous.centroids_original())
    if len(before) == 0 or len(centroids) == 0:
        return {}
    cost = np.sqrt(((centroids[:, None, :] - before[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(cost)
    return {
        int(r): previous.keys[int(c)]
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        if cost[r, c] <= max_distance
    }


def _splits_and_merges(
    previous_labels: Sequence[str | None], labels: Sequence[str | None]
) -> dict[str, list[Any]]:
    """Previous clusters whose users now mostly sit in two or more clusters (split), and new
    clusters that mostly hold users of two or more previous ones (merged); "mostly": at least
    a quarter of the cluster's users, for two or more."""
    pairs: dict[tuple[str, str], int] = {}
    before_sizes: dict[str, int] = {}
    after_sizes: dict[str, int] = {}
    for old, new in zip(previous_labels, labels, strict=True):
        if old is None or new is None:
            continue
        pairs[(old, new)] = pairs.get((old, new), 0) + 1
        before_sizes[old] = before_sizes.get(old, 0) + 1
        after_sizes[new] = after_sizes.get(new, 0) + 1
    split = []
    for old, size in sorted(before_sizes.items()):
        parts = sorted(new for (o, new), n in pairs.items() if o == old and n >= size / 4)
        if len(parts) >= 2:
            split.append({"from": old, "into": parts})
    merged = []
    for new, size in sorted(after_sizes.items()):
        parts = sorted(old for (old, n2), n in pairs.items() if n2 == new and n >= size / 4)
        if len(parts) >= 2:
            merged.append({"into": new, "from": parts})
    return {"split": split, "merged": merged}


def _describe(
    spec: ClusteringSpec, matrix: Matrix, labels: Labels, keys: list[str], centroids: Matrix
) -> list[ClusterDescription]:
    described = []
    for index, key in enumerate(keys):
        inside = labels == index
        size = int(inside.sum())
        effects: list[tuple[str, float]] = []
        for column, feature in enumerate(spec.features):
            values = matrix[:, column]
            a, b = values[inside], values[~inside]
            if len(a) < 2 or len(b) < 2:
                continue
            # Cohen's d with the pooled standard deviation (Cohen 1988)
            pooled = math.sqrt(
                ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1))
                / (len(a) + len(b) - 2)
            )
            d = (a.mean() - b.mean()) / pooled if pooled > 0 else 0.0
            effects.append((feature, round(float(d), 4)))
        effects.sort(key=lambda e: (-abs(e[1]), e[0]))
        # a small effect (|d| < 0.2, Cohen's threshold) does not name a cluster
        strongest = [e for e in effects if abs(e[1]) >= 0.2][:2]
        name = ", ".join(f"{'high' if d > 0 else 'low'} {f}" for f, d in strongest) or "typical"
        described.append(
            ClusterDescription(
                key=key,
                size=size,
                centroid={
                    f: round(float(v), 6)
                    for f, v in zip(spec.features, centroids[index].tolist(), strict=True)
                },
                distinguishing=[{"feature": f, "effectSize": d} for f, d in effects[:5]],
                name=name,
            )
        )
    return described


def fit_clustering(
    matrix: Matrix,
    spec: ClusteringSpec,
    *,
    previous: ClusterRun | None = None,
    previous_labels: Mapping[int, str | None] | None = None,
    new_key: Any = None,
) -> ClusterRun:
    """Fit a run on ``matrix`` (rows: users, columns: ``spec.features``), matched to
    ``previous`` when given. ``previous_labels`` maps row numbers to the previous run's key
    of the same user, for the split and merge report; ``new_key(n)`` names the n-th fresh
    cluster (default ``c<n>``)."""
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(spec.features):
        raise ValidationError(
            f"the matrix has {data.shape[-1] if data.ndim == 2 else '?'} columns for "
            f"{len(spec.features)} features",
            code="invalid_matrix",
        )
    if len(data) < 3:
        raise ValidationError("a clustering needs at least 3 users", code="too_few_users")
    if not np.isfinite(data).all():
        raise ValidationError("features must be finite numbers", code="invalid_matrix")
    rng = np.random.default_rng(spec.seed)
    standard, mean, scale = _standardise(data)
    components = None
    points = standard
    if spec.pca_components:
        pca = PCA(n_components=min(spec.pca_components, data.shape[1]), random_state=spec.seed)
        points = pca.fit_transform(standard)
        components = np.asarray(pca.components_, dtype=np.float64)
    candidates: dict[int, float] = {}
    if spec.algorithm == "hdbscan":
        k = 0
    elif spec.k == "auto":
        k, candidates = _choose_k(spec, points, rng)
    else:
        k = min(int(spec.k), len(points) - 1)
    labels, centroids = _fit_labels(spec.algorithm, k, spec.seed, points)
    sample = _sample(len(points), spec.sample_size, rng)
    distinct = len(set(labels[sample].tolist()) - {NOISE})
    clustered = labels != NOISE
    run = ClusterRun(
        spec=spec,
        mean=mean,
        scale=scale,
        components=components,
        centroids=centroids,
        keys=[],
        labels=[],
        k=len(centroids),
        silhouette=(
            round(
                float(silhouette_score(points[sample], labels[sample], random_state=spec.seed)), 6
            )
            if 2 <= distinct < len(sample)
            else None
        ),
        davies_bouldin=(
            round(float(davies_bouldin_score(points[clustered], labels[clustered])), 6)
            if len(set(labels[clustered].tolist())) >= 2
            else None
        ),
        candidates=candidates,
    )
    # the previous run's centroids are measured in this run's space
    matched = _match(previous, centroids, run.project, spec.max_match_distance) if previous else {}
    taken = set(previous.keys) if previous else set()
    keys = run.keys
    fresh = 0
    for index in range(run.k):
        if index in matched:
            keys.append(matched[index])
            continue
        while True:
            fresh += 1
            candidate = new_key(fresh) if new_key is not None else f"c{fresh}"
            if candidate not in taken:
                break
        taken.add(candidate)
        keys.append(candidate)
    run.labels = [keys[i] if i != NOISE else None for i in labels.tolist()]
    run.clusters = _describe(spec, data, labels, keys, run.centroids_original())
    before = set(previous.keys) if previous else set()
    changes: dict[str, list[Any]] = {
        "kept": sorted(set(keys) & before),
        "appeared": sorted(set(keys) - before),
        "disappeared": sorted(before - set(keys)),
    }
    if previous_labels is not None:
        old = [previous_labels.get(i) for i in range(len(run.labels))]
        changes.update(_splits_and_merges(old, run.labels))
    run.changes = changes
    return run
