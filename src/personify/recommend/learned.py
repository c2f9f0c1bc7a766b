"""Learned recommenders, trained on the lake's interactions: EASE, implicit ALS, BPR.

* **EASE** (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): an item-item
  weight matrix in closed form, ``P = (X'X + lambda I)^-1``, ``B = I - P diagMat(1 /
  diag(P))`` (zero diagonal), scores ``X_u B``. ``X`` is binary (the user touched the item).
  The inverse is dense in the items, so only the ``max_items`` items most users touched are
  modelled (``DEFAULT_EASE_MAX_ITEMS``: a 4,000 x 4,000 float64 inverse takes 128 MB); the
  others are never recommended by it.
* **ALS** (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback
  Datasets"), through ``implicit``: confidence ``1 + alpha * log1p(weight)``, where the
  weight sums the user's interactions with the item (purchases weigh most).
* **BPR** (Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback"),
  through ``implicit``: pairwise ranking on which items a user touched.

All are deterministic for a seed: ``implicit`` runs single-threaded (``num_threads=1``) and
BLAS is held to one thread while fitting (several threads reorder sums, and ``implicit``
warns that they slow it down).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import scipy.sparse as sp

from personify.recommend.interactions import FloatArray, IntArray, Interactions
from personify.recommend.ranking import ScoringRecommender

DEFAULT_EASE_L2 = 500.0
DEFAULT_EASE_MAX_ITEMS = 4_000
DEFAULT_SEED = 7


def _implicit(module: str) -> Any:
    # imported when a model is fitted: it is slow to import and untyped
    return importlib.import_module(f"implicit.cpu.{module}")


def _one_blas_thread() -> Any:
    """A context holding BLAS to one thread while it is open (``threadpoolctl``)."""
    threadpoolctl = importlib.import_module("threadpoolctl")
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _unit_rows(factors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit: FloatArray = np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)
    return unit


class Ease(ScoringRecommender):
    """EASE: a closed-form item-item model with an L2 penalty, over the most touched items."""

    name = "ease"

    def __init__(
        self, *, l2: float = DEFAULT_EASE_L2, max_items: int = DEFAULT_EASE_MAX_ITEMS
    ) -> None:
        super().__init__()
        self.l2 = l2
        self.max_items = max_items
        self.kept: IntArray = np.zeros(0, dtype=np.int64)
        self.weights: FloatArray = np.zeros((0, 0))
        self._touched: sp.csr_matrix = sp.csr_matrix((0, 0))

    def _fit(self, interactions: Interactions) -> None:
        touched = interactions.matrix()
        touched.data[:] = 1.0
        users_per_item = np.diff(touched.tocsc().indptr)
        # the most touched items, ties by id; kept in id order
        by_reach = np.lexsort((np.arange(users_per_item.shape[0]), -users_per_item))
        self.kept = np.sort(by_reach[: self.max_items]).astype(np.int64)
        x = touched[:, self.kept]
        gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        with _one_blas_thread():
            inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights
        self._touched = x.tocsr()

    def _scores(self, rows: IntArray) -> FloatArray:
        scores = np.full((rows.shape[0], len(self.item_ids)), -np.inf)
        scores[:, self.kept] = self._touched[rows] @ self.weights
        return scores

    def _similarity(self, column: int) -> FloatArray:
        values = np.full(len(self.item_ids), -np.inf)
        position = np.searchsorted(self.kept, column)
        if position < self.kept.shape[0] and self.kept[position] == column:
            values[self.kept] = self.weights[position]
        return values


class _Factorised(ScoringRecommender):
    """Scores as user factors dot item factors; likeness as the cosine of item factors."""

    def __init__(self) -> None:
        super().__init__()
        self.user_factors: FloatArray = np.zeros((0, 0))
        self.item_factors: FloatArray = np.zeros((0, 0))
        self._unit_items: FloatArray = np.zeros((0, 0))

    def _keep(self, model: Any) -> None:
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)
        self._unit_items = _unit_rows(self.item_factors)

    def _scores(self, rows: IntArray) -> FloatArray:
        scores: FloatArray = self.user_factors[rows] @ self.item_factors.T
        return scores

    def _similarity(self, column: int) -> FloatArray:
        likeness: FloatArray = self._unit_items @ self._unit_items[column]
        return likeness


class Als(_Factorised):
    """Implicit-feedback matrix factorisation by alternating least squares (``implicit``)."""

    name = "als"

    def __init__(
        self,
        *,
        factors: int = 32,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed

    def _fit(self, interactions: Interactions) -> None:
        confidence = interactions.matrix()
        confidence.data = np.log1p(confidence.data)
        als = _implicit("als")
        # implicit checks the BLAS threads when a model is made, and warns unless held to one
        # (imported first: a BLAS its import loads would escape the limit)
        with _one_blas_thread():
            model = als.AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=1,
            )
            model.fit(confidence.astype(np.float32), show_progress=False)
        self._keep(model)


class Bpr(_Factorised):
    """Bayesian personalised ranking by stochastic gradient descent (``implicit``)."""

    name = "bpr"

    def __init__(
        self,
        *,
        factors: int = 32,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 200,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.seed = seed

    def _fit(self, interactions: Interactions) -> None:
        touched = interactions.matrix()
        touched.data[:] = 1.0
        bpr = _implicit("bpr")
        with _one_blas_thread():
            model = bpr.BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=1,
                verify_negative_samples=True,
            )
            model.fit(touched.astype(np.float32), show_progress=False)
        self._keep(model)
