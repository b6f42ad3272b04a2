"""The run's model as a scikit-learn classifier (fairlearn's ThresholdOptimizer wraps one).

A module of its own so that scikit-learn (a second of import time) loads only when mitigation runs.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["RunClassifier"]


class RunClassifier(ClassifierMixin, BaseEstimator):
    """The run's model as the prefit scikit-learn classifier ThresholdOptimizer wraps:
    ``predict_proba`` over encoded feature rows, column 1 the positive class's probability.
    ``scores``: encoded rows (a tensor) -> class probabilities (an array), the run's model."""

    def __init__(self, scores=None, positive: int = 1):
        self.scores = scores
        self.positive = positive
        self.classes_ = np.array([0, 1])

    def fit(self, X, y):  # prefit: never trained here
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def predict_proba(self, X) -> np.ndarray:
        p = self.scores(torch.as_tensor(np.asarray(X, dtype=np.float32)))[:, self.positive]
        p = p.astype(np.float64)  # fairlearn writes float64 mixtures into a series of these scores
        return np.stack([1 - p, p], axis=1)
