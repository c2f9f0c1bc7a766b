"""Machine-learned segments: fitting a clustering run, keeping cluster ids stable across runs,
and describing each cluster.

This module is the computation, on feature vectors (rows are users, columns the features a
clustering names) that come in shards: ``fit_shards`` reads them a few times, one shard at a
time, so memory holds a shard and a bounded sample, never every user at once (the plain
k-means algorithm alone reads every row into memory). Storing runs, scheduling them and
assigning users in the worker build on it (``personify.segments.clusterings``). A run:

1. **Standardises** each feature by its mean and standard deviation over every row (one
   streamed pass; a constant feature stays 0; a missing value, NaN, counts as the mean),
   and optionally projects onto principal
   components (``pca``, fitted on the sample).
2. **Samples** rows uniformly across shards (each row gets a random key; the smallest keys
   are kept), for choosing k, for the metrics and for the algorithms that fit on a sample.
3. **Chooses k** when asked (``k="auto"``): every candidate in ``k_range`` is fitted on the
   sample (``sample_size`` rows) and scored by its silhouette on 2,000 of them; the best
   wins, and every candidate's score is kept with the run.
4. **Fits** the algorithm: ``kmeans`` (every row, in memory), ``minibatch-kmeans`` (started
   from the sample's centres, then one streamed pass of mini-batches over every row),
   ``gmm`` (Gaussian mixture, full covariance, fitted on up to 200,000 sampled rows),
   ``hdbscan`` (density-based: k is found, not given; fitted on up to 20,000 sampled rows,
   where a row in no dense region is noise), or ``auto`` (k-means up to 50,000 rows,
   mini-batch k-means above).
5. **Assigns** every row, shard by shard: to the nearest centroid, or for ``gmm`` to the
   most probable component. The worker places a user between runs the same way (``assign``).
   The rows HDBSCAN itself fitted keep its labels, noise included.
6. **Matches** the new clusters to the previous run's (``previous``): the Hungarian algorithm
   (Kuhn 1955, scipy's ``linear_sum_assignment``) pairs clusters at the least total distance
   between centroids, both in this run's standardised space; a pair farther apart than
   ``max_match_distance`` is not a match. A matched cluster keeps its key (and so its
   segment); an unmatched new one gets a fresh key. With the previous run's labels of the
   same users, the run also reports which previous clusters split (their users now mostly in
   two or more clusters) or merged (two or more previous clusters now mostly in one).
7. **Describes** every cluster: its size, its centroid in original units, and the features
   that set it apart most, by effect size (Cohen's d of the cluster against everyone else,
   with the pooled standard deviation, from streamed sums); its automatic name is built from
   the two strongest ("high spend, low sessions"). Quality: the silhouette and the
   Davies-Bouldin index, both on the sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import multivariate_normal
from sklearn.cluster import HDBSCAN, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import davies_bouldin_score, pairwise_distances_argmin, silhouette_score
from sklearn.mixture import GaussianMixture

from personify.errors import ValidationError

__all__ = [
    "ALGORITHMS",
    "ClusterDescription",
    "ClusterRun",
    "ClusteringSpec",
    "fit_clustering",
    "fit_shards",
    "spec_dict",
    "spec_from_dict",
]

Algorithm = Literal["auto", "kmeans", "minibatch-kmeans", "gmm", "hdbscan"]
ALGORITHMS: tuple[str, ...] = ("auto", "kmeans", "minibatch-kmeans", "gmm", "hdbscan")
Matrix = np.ndarray[Any, np.dtype[np.float64]]
Labels = np.ndarray[Any, np.dtype[np.int64]]
# above this many rows, "auto" fits mini-batch k-means (bounded memory, one pass per batch)
_FULL_KMEANS_ROWS = 50_000
# the sampled rows a Gaussian mixture and HDBSCAN are fitted on, at most
_GMM_ROWS = 200_000
_HDBSCAN_ROWS = 20_000
_BATCH = 4096
_SILHOUETTE_ROWS = 2_000
NOISE = -1


@dataclass(frozen=True, slots=True)
class ClusteringSpec:
    """What to fit: the features' names (the matrix's columns), the algorithm, k, options."""

    features: tuple[str, ...]
    algorithm: Algorithm = "auto"
    k: int | Literal["auto"] = "auto"
    k_range: tuple[int, int] = (2, 10)
    pca_components: int | None = None
    sample_size: int = 5_000
    seed: int = 0
    # in standardised units: farther apart than this, two centroids are not the same cluster
    max_match_distance: float = 1.5

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValidationError(
                f"unknown algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}",
                code="invalid_algorithm",
                details={"field": "algorithm"},
            )
        if not self.features:
            raise ValidationError(
                "a clustering needs at least one feature",
                code="no_features",
                details={"field": "features"},
            )
        low, high = self.k_range
        if self.k != "auto" and (
            not isinstance(self.k, int) or isinstance(self.k, bool) or not 2 <= self.k <= 50
        ):
            raise ValidationError(
                "k is a whole number from 2 to 50, or auto",
                code="invalid_k",
                details={"field": "k"},
            )
        if low < 2 or high < low or high > 50:
            raise ValidationError(
                "kRange is [low, high] with 2 <= low <= high <= 50",
                code="invalid_k",
                details={"field": "kRange"},
            )
        if self.pca_components is not None and not 1 <= self.pca_components <= len(self.features):
            raise ValidationError(
                "pca is a number of components between 1 and the number of features",
                code="invalid_pca",
                details={"field": "pca"},
            )
        if not 0 <= self.seed < 2**32:
            raise ValidationError(
                "seed is a whole number from 0 to 4294967295",
                code="invalid_field",
                details={"field": "seed"},
            )
        if not 100 <= self.sample_size <= 100_000:
            raise ValidationError(
                "sampleSize is between 100 and 100,000",
                code="invalid_sample_size",
                details={"field": "sampleSize"},
            )


def spec_dict(spec: ClusteringSpec) -> dict[str, Any]:
    """A spec as JSON (the API's field names)."""
    return {
        "features": list(spec.features),
        "algorithm": spec.algorithm,
        "k": spec.k,
        "kRange": list(spec.k_range),
        "pca": spec.pca_components,
        "sampleSize": spec.sample_size,
        "seed": spec.seed,
    }


def spec_from_dict(data: Mapping[str, Any]) -> ClusteringSpec:
    """The spec of a definition or run as ``_spec_dict`` (and the API) write it."""
    k_range = data.get("kRange", [2, 10])
    if not (
        isinstance(k_range, list)
        and len(k_range) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in k_range)
    ):
        raise ValidationError(
            "kRange is [low, high]", code="invalid_k", details={"field": "kRange"}
        )
    for name in ("pca", "sampleSize", "seed"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValidationError(
                f"{name} is a whole number", code="invalid_field", details={"field": name}
            )
    k = data.get("k", "auto")
    return ClusteringSpec(
        features=tuple(data["features"]),
        algorithm=data.get("algorithm", "auto"),
        k=k,
        k_range=(k_range[0], k_range[1]),
        pca_components=data.get("pca"),
        sample_size=5_000 if data.get("sampleSize") is None else data["sampleSize"],
        seed=0 if data.get("seed") is None else data["seed"],
    )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterDescription:
        """The description ``to_dict`` wrote."""
        return cls(
            key=str(data["key"]),
            size=int(data["size"]),
            centroid={str(k): float(v) for k, v in data["centroid"].items()},
            distinguishing=list(data["distinguishing"]),
            name=str(data["name"]),
        )


@dataclass(slots=True)
class ClusterRun:
    """A fitted run: how to assign a row (``assign``), the quality metrics, every k
    candidate's score, the clusters, and what changed since the last run. ``labels`` (each
    row's cluster key) is filled by ``fit_clustering`` only: ``fit_shards`` hands each
    shard's labels to its caller instead of keeping them."""

    spec: ClusteringSpec
    mean: Matrix
    scale: Matrix
    components: Matrix | None
    centroids: Matrix  # in the (standardised, projected) space ``assign`` measures in
    keys: list[str]  # the key of each centroid's cluster
    k: int
    silhouette: float | None
    davies_bouldin: float | None
    rows: int = 0
    # a Gaussian mixture's covariances (in the same space) and weights: ``assign`` then
    # picks the most probable component instead of the nearest centroid
    covariances: Matrix | None = None
    weights: Matrix | None = None
    labels: list[str | None] = field(default_factory=list)
    candidates: dict[int, float] = field(default_factory=dict)
    clusters: list[ClusterDescription] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)

    def project(self, rows: Matrix) -> Matrix:
        """Rows in the space the centroids are in (standardised, then projected); a missing
        value (NaN) is the feature's mean."""
        standard = np.nan_to_num(
            (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale, nan=0.0
        )
        return standard @ self.components.T if self.components is not None else standard

    def assign_indices(self, points: Matrix) -> Labels:
        """The cluster number of each projected point (``project``)."""
        if len(points) == 0 or len(self.centroids) == 0:
            return np.full(len(points), NOISE, dtype=np.int64)
        if self.covariances is not None and self.weights is not None:
            scores = np.column_stack(
                [
                    multivariate_normal.logpdf(points, mean, cov, allow_singular=True)
                    + math.log(max(float(weight), 1e-300))
                    for mean, cov, weight in zip(
                        self.centroids, self.covariances, self.weights, strict=True
                    )
                ]
            )
            return np.asarray(scores.reshape(len(points), -1).argmax(axis=1), dtype=np.int64)
        return np.asarray(pairwise_distances_argmin(points, self.centroids), dtype=np.int64)

    def assign(self, rows: Matrix) -> list[str]:
        """The key of each row's cluster (how the worker places a user between runs)."""
        indices = self.assign_indices(self.project(np.atleast_2d(rows)))
        return [self.keys[i] for i in indices.tolist()]

    def centroids_original(self) -> Matrix:
        """The centroids in the features' original units."""
        standard = (
            self.centroids @ self.components if self.components is not None else self.centroids
        )
        result: Matrix = standard * self.scale + self.mean
        return result

    def model(self) -> dict[str, Any]:
        """What ``assign`` needs, as JSON (``from_model`` reads it back exactly)."""
        return {
            "features": list(self.spec.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist() if self.components is not None else None,
            "centroids": self.centroids.tolist(),
            "keys": list(self.keys),
            "covariances": self.covariances.tolist() if self.covariances is not None else None,
            "weights": self.weights.tolist() if self.weights is not None else None,
        }

    @classmethod
    def from_model(
        cls,
        spec: ClusteringSpec,
        model: Mapping[str, Any],
        *,
        clusters: Sequence[ClusterDescription] = (),
    ) -> ClusterRun:
        """A run that assigns as the stored one did (metrics and report not included)."""

        def array(name: str) -> Matrix | None:
            value = model.get(name)
            return None if value is None else np.asarray(value, dtype=np.float64)

        centroids = array("centroids")
        keys = [str(k) for k in model["keys"]]
        width = len(model["mean"])
        return cls(
            spec=spec,
            mean=np.asarray(model["mean"], dtype=np.float64),
            scale=np.asarray(model["scale"], dtype=np.float64),
            components=array("components"),
            centroids=(centroids if centroids is not None else np.zeros((0, width))).reshape(
                len(keys), -1
            ),
            keys=keys,
            k=len(keys),
            silhouette=None,
            davies_bouldin=None,
            covariances=array("covariances"),
            weights=array("weights"),
            clusters=list(clusters),
        )


class _Sample:
    """A uniform sample of at most ``size`` rows across shards: each row gets a random key and
    the smallest keys are kept, so any prefix (by key) is a uniform sample too."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size = size
        self._rng = rng
        self.keys = np.zeros(0)
        self.index = np.zeros(0, dtype=np.int64)
        self.rows: Matrix | None = None

    def add(self, rows: Matrix, start: int) -> None:
        keys = self._rng.random(len(rows))
        index = np.arange(start, start + len(rows), dtype=np.int64)
        if self.rows is None:
            self.rows = np.empty((0, rows.shape[1]))
        all_keys = np.concatenate([self.keys, keys])
        all_index = np.concatenate([self.index, index])
        all_rows = np.vstack([self.rows, rows])
        if len(all_keys) > self._size:
            keep = np.argpartition(all_keys, self._size - 1)[: self._size]
            all_keys, all_index, all_rows = all_keys[keep], all_index[keep], all_rows[keep]
        self.keys, self.index, self.rows = all_keys, all_index, all_rows

    def first(self, size: int) -> tuple[Matrix, np.ndarray[Any, Any]]:
        """The ``size`` rows with the smallest keys, in row order, and their row numbers."""
        assert self.rows is not None
        chosen = np.argsort(self.keys, kind="stable")[:size]
        chosen = chosen[np.argsort(self.index[chosen])]
        return self.rows[chosen], self.index[chosen]


def _silhouette(points: Matrix, labels: Labels, seed: int) -> float:
    """The silhouette on at most 2,000 of the points: its cost grows with the square of the
    rows, and 2,000 score within 0.01 of 5,000 (bench/README.md, clustering)."""
    size = min(len(points), _SILHOUETTE_ROWS)
    return float(silhouette_score(points, labels, sample_size=size, random_state=seed))


def _candidate(algorithm: str, k: int, seed: int, points: Matrix) -> tuple[Labels, Matrix]:
    """A k candidate fitted on the sample: its labels and centres."""
    if algorithm == "gmm":
        mixture = GaussianMixture(n_components=k, random_state=seed, covariance_type="full")
        labels = mixture.fit_predict(points)
        return labels.astype(np.int64), np.asarray(mixture.means_, dtype=np.float64)
    model = KMeans(n_clusters=k, random_state=seed, n_init=2).fit(points)
    return model.labels_.astype(np.int64), np.asarray(model.cluster_centers_, dtype=np.float64)


def _choose_k(spec: ClusteringSpec, points: Matrix) -> tuple[int, dict[int, float], Matrix | None]:
    """The k with the best silhouette on the sample, every candidate's score, and the
    winner's centres."""
    low, high = spec.k_range
    high = min(high, len(points) - 1)
    scores: dict[int, float] = {}
    centres: dict[int, Matrix] = {}
    for k in range(low, high + 1):
        labels, found = _candidate(spec.algorithm, k, spec.seed, points)
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = round(_silhouette(points, labels, spec.seed), 6)
        centres[k] = found
    if not scores:
        return low, scores, None
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores, centres[best]


def _match(
    previous: ClusterRun,
    centroids: Matrix,
    project: Callable[[Matrix], Matrix],
    max_distance: float,
) -> dict[int, str]:
    """New cluster index → previous key, by the Hungarian algorithm on centroid distances in
    this run's space (previous centroids taken through original units)."""
    if len(previous.centroids) == 0 or len(centroids) == 0:
        return {}
    before = project(previous.centroids_original())
    cost = np.sqrt(((centroids[:, None, :] - before[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(cost)
    return {
        int(r): previous.keys[int(c)]
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        if cost[r, c] <= max_distance
    }


def _splits_and_merges(pairs: Mapping[tuple[str, str], int]) -> dict[str, list[Any]]:
    """Previous clusters whose users now mostly sit in two or more clusters (split), and new
    clusters that mostly hold users of two or more previous ones (merged); "mostly": at least
    a quarter of the cluster's users, for two or more. ``pairs`` counts users by (previous
    key, new key)."""
    before_sizes: dict[str, int] = {}
    after_sizes: dict[str, int] = {}
    for (old, new), n in pairs.items():
        before_sizes[old] = before_sizes.get(old, 0) + n
        after_sizes[new] = after_sizes.get(new, 0) + n
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


class _Sums:
    """Per cluster: the count, sum and sum of squares of the standardised features."""

    def __init__(self, k: int, width: int) -> None:
        self.count = np.zeros(k)
        self.total = np.zeros((k, width))
        self.squares = np.zeros((k, width))

    def add(self, standard: Matrix, labels: Labels) -> None:
        clustered = labels != NOISE
        labels, standard = labels[clustered], standard[clustered]
        k, width = self.total.shape
        self.count += np.bincount(labels, minlength=k)
        # one bincount over (cluster, column) cells for all columns at once
        cells = (labels[:, None] * width + np.arange(width)).ravel()
        values = standard.ravel()
        self.total += np.bincount(cells, weights=values, minlength=k * width).reshape(k, width)
        self.squares += np.bincount(cells, weights=values * values, minlength=k * width).reshape(
            k, width
        )


def _describe(
    spec: ClusteringSpec, sums: _Sums, keys: list[str], mean: Matrix, scale: Matrix
) -> list[ClusterDescription]:
    """Each cluster's size, centroid (original units) and Cohen's d against everyone else.

    The effect sizes are computed on standardised values: Cohen's d does not change when a
    feature is shifted and scaled."""
    everyone = sums.count.sum()
    all_total = sums.total.sum(axis=0)
    all_squares = sums.squares.sum(axis=0)
    described = []
    for index, key in enumerate(keys):
        n_in = sums.count[index]
        n_out = everyone - n_in
        inside_mean = sums.total[index] / n_in if n_in else np.zeros_like(all_total)
        centroid = inside_mean * scale + mean
        effects: list[tuple[str, float]] = []
        if n_in >= 2 and n_out >= 2:
            out_total = all_total - sums.total[index]
            out_squares = all_squares - sums.squares[index]
            out_mean = out_total / n_out
            # sums of squared deviations, inside and out; pooled (Cohen 1988)
            ss_in = np.maximum(sums.squares[index] - n_in * inside_mean**2, 0.0)
            ss_out = np.maximum(out_squares - n_out * out_mean**2, 0.0)
            pooled = np.sqrt((ss_in + ss_out) / (n_in + n_out - 2))
            for column, feature in enumerate(spec.features):
                spread = float(pooled[column])
                d = (inside_mean[column] - out_mean[column]) / spread if spread > 1e-12 else 0.0
                effects.append((feature, round(float(d), 4)))
        effects.sort(key=lambda e: (-abs(e[1]), e[0]))
        # a small effect (|d| < 0.2, Cohen's threshold) does not name a cluster
        strongest = [e for e in effects if abs(e[1]) >= 0.2][:2]
        name = ", ".join(f"{'high' if d > 0 else 'low'} {f}" for f, d in strongest) or "typical"
        described.append(
            ClusterDescription(
                key=key,
                size=int(n_in),
                centroid={
                    f: round(float(v), 6) for f, v in zip(spec.features, centroid, strict=True)
                },
                distinguishing=[{"feature": f, "effectSize": d} for f, d in effects[:5]],
                name=name,
            )
        )
    return described


def _checked(rows: Any, width: int) -> Matrix:
    data = np.asarray(rows, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != width:
        raise ValidationError(
            f"the matrix has {data.shape[-1] if data.ndim == 2 else '?'} columns for "
            f"{width} features",
            code="invalid_matrix",
        )
    if np.isinf(data).any():
        raise ValidationError("features must be finite numbers", code="invalid_matrix")
    return data


def _fit_model(
    spec: ClusteringSpec,
    algorithm: str,
    k: int,
    shards: Iterable[Any],
    rows: int,
    standardise: Callable[[Matrix], Matrix],
    fit_points: Matrix,
    start: Matrix | None,
) -> tuple[Matrix, Matrix | None, Matrix | None, Labels | None]:
    """The centroids (and a mixture's covariances and weights), and for HDBSCAN its labels of
    ``fit_points``."""
    if algorithm == "hdbscan":
        labels = HDBSCAN(min_cluster_size=max(5, len(fit_points) // 100), copy=True).fit_predict(
            fit_points
        )
        found = sorted(set(labels.tolist()) - {NOISE})
        centroids = np.array([fit_points[labels == c].mean(axis=0) for c in found])
        renumber = {c: i for i, c in enumerate(found)}
        mapped = np.array([renumber.get(int(c), NOISE) for c in labels], dtype=np.int64)
        return centroids.reshape(len(found), fit_points.shape[1]), None, None, mapped
    if algorithm == "gmm":
        mixture = GaussianMixture(n_components=k, random_state=spec.seed, covariance_type="full")
        mixture.fit(fit_points)
        return (
            np.asarray(mixture.means_, dtype=np.float64),
            np.asarray(mixture.covariances_, dtype=np.float64),
            np.asarray(mixture.weights_, dtype=np.float64),
            None,
        )
    if algorithm == "kmeans":
        everything = np.vstack([standardise(_checked(s, len(spec.features))) for s in shards])
        full = KMeans(n_clusters=k, random_state=spec.seed, n_init=4).fit(everything)
        return np.asarray(full.cluster_centers_, dtype=np.float64), None, None, None
    if start is None:
        start = np.asarray(
            KMeans(n_clusters=k, random_state=spec.seed, n_init=2).fit(fit_points).cluster_centers_
        )
    # started from the sample's centres, then one pass of mini-batches over every row
    # (no labels per batch: the assignment pass labels every row once)
    model = MiniBatchKMeans(
        n_clusters=k,
        init=start,
        n_init=1,
        random_state=spec.seed,
        batch_size=_BATCH,
        compute_labels=False,
    )
    for shard in shards:
        points = standardise(_checked(shard, len(spec.features)))
        for offset in range(0, len(points), _BATCH):
            model.partial_fit(points[offset : offset + _BATCH])
    return np.asarray(model.cluster_centers_, dtype=np.float64), None, None, None


def fit_shards(
    shards: Iterable[Any],
    spec: ClusteringSpec,
    *,
    previous: ClusterRun | None = None,
    previous_labels: Callable[[int], Sequence[str | None]] | None = None,
    new_key: Callable[[int, ClusterDescription], str] | None = None,
    reserved: Collection[str] = (),
    on_labels: Callable[[int, Labels, Sequence[str]], None] | None = None,
) -> ClusterRun:
    """Fit a run on feature rows given in shards (module docstring).

    ``shards`` is iterated several times (two or three passes) and yields the same matrices
    each time (rows: users, columns: ``spec.features``). ``previous_labels(i)`` gives the
    previous run's key of each row of shard ``i``, for the split and merge report;
    ``new_key(attempt, cluster)`` names a new cluster, called with attempt 1, 2, ... until
    the key is neither taken nor ``reserved`` (default ``c<n>``, numbered across the run);
    ``on_labels(i, clusters, keys)`` receives the cluster of each row of shard ``i``, as an
    index into ``keys`` (the run's cluster keys; -1: noise)."""
    width = len(spec.features)
    algorithm: str = spec.algorithm
    rng = np.random.default_rng(spec.seed)
    fit_size = {"gmm": _GMM_ROWS, "hdbscan": _HDBSCAN_ROWS}.get(algorithm, 0)
    sample = _Sample(max(spec.sample_size, fit_size), rng)
    rows = 0
    present = np.zeros(width)
    total = np.zeros(width)
    squares = np.zeros(width)
    # pass 1: the moments (of the values present) and the sample
    for shard in shards:
        data = _checked(shard, width)
        missing = np.isnan(data)
        known = np.where(missing, 0.0, data)
        sample.add(data, rows)
        rows += len(data)
        present += (~missing).sum(axis=0)
        total += known.sum(axis=0)
        squares += (known * known).sum(axis=0)
    if rows < 3:
        raise ValidationError("a clustering needs at least 3 users", code="too_few_users")
    counted = np.maximum(present, 1.0)
    # a missing value is the feature's mean (0 when no row has it): it moves no centroid
    fill = total / counted
    mean = fill
    scale = np.sqrt(np.maximum(squares / counted - mean * mean, 0.0))
    scale = np.where(scale > 1e-12 * np.maximum(np.abs(mean), 1.0), scale, 1.0)
    components: Matrix | None = None
    sampled, sampled_index = sample.first(max(spec.sample_size, fit_size))
    sampled_standard = np.nan_to_num((sampled - mean) / scale, nan=0.0)
    if spec.pca_components:
        pca = PCA(n_components=spec.pca_components, random_state=spec.seed)
        pca.fit(sampled_standard)
        components = np.asarray(pca.components_, dtype=np.float64)

    def standard_of(data: Matrix) -> Matrix:
        return np.nan_to_num((data - mean) / scale, nan=0.0)

    def project(standard: Matrix) -> Matrix:
        return standard @ components.T if components is not None else standard

    def standardise(data: Matrix) -> Matrix:
        return project(standard_of(data))

    fit_points = standardise(sampled)
    score_rows, score_index = sample.first(spec.sample_size)
    score_points = standardise(score_rows)
    candidates: dict[int, float] = {}
    start: Matrix | None = None
    if algorithm == "hdbscan":
        k = 0
    elif spec.k == "auto":
        k, candidates, start = _choose_k(spec, score_points)
    else:
        k = min(int(spec.k), rows - 1)
    if algorithm == "auto":
        algorithm = "minibatch-kmeans" if rows > _FULL_KMEANS_ROWS else "kmeans"
    centroids, covariances, weights, fitted_labels = _fit_model(
        spec, algorithm, k, shards, rows, standardise, fit_points, start
    )
    run = ClusterRun(
        spec=spec,
        mean=mean,
        scale=scale,
        components=components,
        centroids=centroids,
        keys=[],
        k=len(centroids),
        silhouette=None,
        davies_bouldin=None,
        rows=rows,
        covariances=covariances,
        weights=weights,
        candidates=candidates,
    )
    # the previous run's centroids are measured in this run's space
    matched = _match(previous, centroids, run.project, spec.max_match_distance) if previous else {}
    # pass 2 (or 3): every row's cluster, and the sums that describe the clusters
    sums = _Sums(run.k, width)
    pairs: dict[tuple[str, str], int] = {}
    labelled: list[tuple[int, Labels]] = []
    start_row = 0
    for number, shard in enumerate(shards):
        data = _checked(shard, width)
        standard = standard_of(data)
        labels = run.assign_indices(project(standard))
        if fitted_labels is not None:
            # the rows HDBSCAN fitted keep its labels (noise included)
            inside = (sampled_index >= start_row) & (sampled_index < start_row + len(data))
            labels[sampled_index[inside] - start_row] = fitted_labels[inside]
        sums.add(standard, labels)
        labelled.append((number, labels))
        start_row += len(data)
    # keys: matched clusters keep theirs, the others get fresh ones (described first)
    provisional = [matched.get(i, f"#{i}") for i in range(run.k)]
    described = _describe(spec, sums, provisional, mean, scale)
    taken = set(previous.keys) if previous else set()
    taken.update(matched.values(), reserved)
    numbered = itertools.count(1)
    for index in range(run.k):
        if index in matched:
            run.keys.append(matched[index])
            continue
        # new_key's attempts start at 1 for each cluster; the default numbers c1, c2, ...
        for attempt in itertools.count(1):
            candidate = new_key(attempt, described[index]) if new_key else f"c{next(numbered)}"
            if candidate not in taken:
                break
        taken.add(candidate)
        run.keys.append(candidate)
    run.clusters = [
        ClusterDescription(key, d.size, d.centroid, d.distinguishing, d.name)
        for key, d in zip(run.keys, described, strict=True)
    ]
    for number, labels in labelled:
        if previous_labels is not None:
            keys = [run.keys[i] if i != NOISE else None for i in labels.tolist()]
            for old, new in zip(previous_labels(number), keys, strict=True):
                if old is not None and new is not None:
                    pairs[(old, new)] = pairs.get((old, new), 0) + 1
        if on_labels is not None:
            on_labels(number, labels, run.keys)
    # quality, on the sample
    score_labels = run.assign_indices(score_points)
    if fitted_labels is not None:
        at = np.searchsorted(sampled_index, score_index)
        score_labels = fitted_labels[at]
    clustered = score_labels != NOISE
    distinct = len(set(score_labels[clustered].tolist()))
    if 2 <= distinct < len(score_points):
        run.silhouette = round(_silhouette(score_points, score_labels, spec.seed), 6)
        run.davies_bouldin = round(
            float(davies_bouldin_score(score_points[clustered], score_labels[clustered])), 6
        )
    before = set(previous.keys) if previous else set()
    changes: dict[str, list[Any]] = {
        "kept": sorted(set(run.keys) & before),
        "appeared": sorted(set(run.keys) - before),
        "disappeared": sorted(before - set(run.keys)),
    }
    if previous_labels is not None:
        changes.update(_splits_and_merges(pairs))
    run.changes = changes
    return run


def fit_clustering(
    matrix: Any,
    spec: ClusteringSpec,
    *,
    previous: ClusterRun | None = None,
    previous_labels: Mapping[int, str | None] | None = None,
    new_key: Callable[[int, ClusterDescription], str] | None = None,
) -> ClusterRun:
    """Fit a run on one in-memory ``matrix`` (rows: users, columns: ``spec.features``) and
    keep every row's key in ``labels``. ``previous_labels`` maps row numbers to the previous
    run's key of the same user, for the split and merge report."""
    data = _checked(matrix, len(spec.features))
    labels: list[str | None] = []
    run = fit_shards(
        [data],
        spec,
        previous=previous,
        previous_labels=(
            (lambda _: [previous_labels.get(i) for i in range(len(data))])
            if previous_labels is not None
            else None
        ),
        new_key=new_key,
        on_labels=lambda _, clusters, keys: labels.extend(
            keys[i] if i != NOISE else None for i in clusters.tolist()
        ),
    )
    run.labels = labels
    return run
