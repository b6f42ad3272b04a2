"""Regression targets: standardised for training (after ``log1p`` for skewed, non-negative ones),
and mapped back to the data's units for metrics and predictions.

A network regressing a heavy-tailed target (prices, counts, incomes) spends its capacity on the few
largest values; learning ``log1p(y)`` instead evens the errors out across the range, the usual
choice for such targets (e.g. the log-price target of house-price benchmarks). ``data.target_transform``
picks, per run:

* ``standard``: ``(y - mean) / std`` with the training statistics (what every run did before);
* ``log``: ``log1p(y)``, then standardised; refused when a training target is negative;
* ``auto``: ``log`` for a column whose training targets are all ≥ 0 and whose skewness exceeds
  :data:`LOG_SKEW`, ``standard`` for the others (decided per target column);
* ``none``: the raw values.

The model always learns ``transform(y)``; :meth:`TargetTransform.inverse` undoes it on the
model's outputs, so metrics (computed on inverted outputs and targets) and predictions are in the
data's own units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.errors import DataError

__all__ = ["LOG_SKEW", "TargetScaler", "TargetTransform"]

LOG_SKEW = 2.0  # target_transform auto: a non-negative column more skewed than this is learnt as log1p
# log1p(y) is clamped to [0, LOG_MAX] before expm1 when inverting: the domain of the transform (targets ≥ 0)
# and the largest value whose expm1 float32 holds, so an outlying output never becomes inf or NaN
LOG_MAX = 88.0


class TargetTransform:
    """Per target column: ``log1p`` (where ``log``) then ``(z - mean) / std``; ``inverse`` undoes both.

    ``mean``, ``std`` and ``log`` are lists, one entry per target column (a forecaster repeats its
    columns' statistics per step). ``TargetTransform([0.0], [1.0])`` is the identity.

    >>> t = TargetTransform.fit(np.array([1.0, 2.0, 3.0]))
    >>> t.transform(np.array([2.0])).tolist()
    [[0.0]]
    """

    def __init__(self, mean: list[float], std: list[float], log: list[bool] | None = None):
        self.mean = list(mean)
        self.std = list(std)
        self.log = list(log) if log is not None else [False] * len(self.mean)

    @classmethod
    def fit(cls, y: np.ndarray, method: str = "standard", origin: str = "data",
            names: list[str] | None = None) -> "TargetTransform":
        """Fit on the training targets ``y`` (N,) or (N, T) with ``method`` (``data.target_transform``)."""
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)  # (N, T)
        names = list(names or []) or [f"target {i}" for i in range(y.shape[1])]
        if method == "none":
            return cls([0.0] * y.shape[1], [1.0] * y.shape[1])
        if method == "log":
            negative = (y < 0).any(axis=0)
            if negative.any():
                t = int(np.argmax(negative))
                raise DataError(f"{origin}: data.target_transform: log needs targets ≥ 0, and column '{names[t]}' has "
                                f"{int((y[:, t] < 0).sum())} negative value(s) (smallest {y[:, t].min():g}); use "
                                f"target_transform: standard (or auto)")
            log = [True] * y.shape[1]
        elif method == "auto":
            log = [bool((column >= 0).all() and _skewness(column) > LOG_SKEW) for column in y.T]
        else:
            log = [False] * y.shape[1]
        z = np.where(log, np.log1p(np.where(log, np.maximum(y, 0), 0)), y)
        std = z.std(axis=0)
        return cls(z.mean(axis=0).tolist(), np.where(std > 1e-12, std, 1.0).tolist(), log)

    def transform(self, y: np.ndarray, origin: str = "data") -> np.ndarray:
        """Targets (N,) or (N, T) in the data's units -> (N, T) float32, what the model learns."""
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if any(self.log):
            log = np.array(self.log)
            negative = (y[:, log] < 0).any(axis=1)
            if negative.any():
                raise DataError(f"{origin}: the target has negative values (first at row {int(np.argmax(negative))}), "
                                f"but this run learnt log1p of it (data.target_transform); drop those rows, or "
                                f"train with target_transform: standard")
            y = np.where(log, np.log1p(np.where(log, y, 0)), y)
        # C order: several target columns of a DataFrame arrive column-major, and batches sliced
        # from a column-major tensor are not contiguous (metrics call .view on them)
        scaled = (y - np.array(self.mean)) / np.array(self.std)
        return np.ascontiguousarray(scaled, dtype=np.float32)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Model outputs (..., T) back in the data's units (on their device and dtype)."""
        mean = torch.tensor(self.mean, device=y.device, dtype=y.dtype)
        std = torch.tensor(self.std, device=y.device, dtype=y.dtype)
        out = y * std + mean
        if any(self.log):
            log = torch.tensor(self.log, device=y.device)
            out = torch.where(log, torch.expm1(out.clamp(0.0, LOG_MAX)), out)
        return out

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mean": self.mean, "std": self.std}
        if any(self.log):
            data["log"] = self.log
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TargetTransform":
        return cls(data["mean"], data["std"], data.get("log"))  # runs saved before the log: standardised only


TargetScaler = TargetTransform  # the name of the standardising-only class it replaces


def _skewness(values: np.ndarray) -> float:
    """Sample skewness E[(y - mean)^3] / std^3; 0 for a constant column."""
    std = values.std()
    return float(((values - values.mean()) ** 3).mean() / std**3) if std > 1e-12 else 0.0
