"""Scalings of one numeric column, fitted on its (imputed) training values; each has an inverse.

* ``standard``: ``(x - mean) / std``.
* ``robust``: robust scaling and smooth clipping, from RealMLP (Holzmüller, Grinsztajn & Steinwart
  2024, "Better by Default: Strong Pre-Tuned MLPs and Boosted Trees on Tabular Data"): centre by the
  median, divide by the interquartile range (half the range when the IQR is 0: a mostly constant
  column), then ``x / sqrt(1 + (x / 3)^2)``, which is the identity near 0 and bends outliers smoothly
  into (-3, 3), so a single huge value cannot dominate a batch yet still ranks above the others.
* ``quantile``: a quantile transform to a standard normal, as FT-Transformer preprocesses numbers
  (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data", with scikit-learn's
  ``QuantileTransformer(output_distribution="normal", n_quantiles=max(min(n // 30, 1000), 10))``).
  Written here over stored quantiles (``np.interp``), so the run saves plain JSON, not a pickle.
  Fitting adds tiny seeded noise to break ties, as their code does; predictions add none.
* ``none``: the raw values.

A column's fitted state is ``(how, center, scale, quantiles)``; center and scale are the mean and
std (standard), the median and IQR (robust), 0 and 1 (quantile, none).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SCALINGS", "fit_scaling", "scale", "unscale"]

SCALINGS = ("standard", "robust", "quantile", "none")
CLIP = 3.0  # robust: the smooth clip's bound, RealMLP's value
MAX_QUANTILES = 1000  # quantile: stored quantiles per column, at most (scikit-learn's default)
ROWS_PER_QUANTILE = 30  # quantile: ... and at most one per this many training rows (FT-Transformer's choice)
QUANTILE_NOISE = 1e-3  # quantile: fit-time noise, in standard deviations of the column, to break ties
BOUND = 1e-7  # quantile: probabilities are clipped to [BOUND, 1 - BOUND] (±5.2 sigma), as scikit-learn does


def fit_scaling(values: np.ndarray, how: str, seed: int = 0) -> tuple[float, float, list[float] | None]:
    """``(center, scale, quantiles)`` of the finite training ``values`` (N,) for scaling ``how``."""
    if how == "standard":
        std = float(values.std())
        return float(values.mean()), (std if std > 1e-12 else 1.0), None
    if how == "robust":
        low, median, high = np.quantile(values, [0.25, 0.5, 0.75])
        spread = float(high - low) or 0.5 * float(values.max() - values.min())
        return float(median), (spread if spread > 1e-12 else 1.0), None
    if how == "quantile":
        count = int(np.clip(len(values) // ROWS_PER_QUANTILE, 10, MAX_QUANTILES))
        noise = QUANTILE_NOISE * max(float(values.std()), 1e-12)
        noisy = values + noise * np.random.default_rng(seed).standard_normal(len(values))
        return 0.0, 1.0, np.quantile(noisy, np.linspace(0, 1, min(count, len(values)))).tolist()
    return 0.0, 1.0, None  # none


def scale(values: np.ndarray, how: str, center: float, spread: float, quantiles: list[float] | None) -> np.ndarray:
    """Raw float64 ``values`` (N,) -> the scaled values the model reads."""
    if how == "quantile":
        q = np.asarray(quantiles)
        grid = np.linspace(0, 1, len(q))
        # interpolating upward and downward and averaging gives tied quantiles (a value repeated over
        # many rows) the middle of their probabilities rather than the lowest (scikit-learn does this)
        u = 0.5 * (np.interp(values, q, grid) - np.interp(-values, -q[::-1], -grid[::-1]))
        return torch.special.ndtri(torch.from_numpy(np.clip(u, BOUND, 1 - BOUND))).numpy()
    x = (values - center) / spread
    if how == "robust":
        with np.errstate(over="ignore", invalid="ignore"):
            # hypot(1, x / 3) is sqrt(1 + (x / 3)^2) without overflowing for |x| beyond ~1e154; an x that
            # is itself infinite (a value beyond float64 once divided by a tiny scale) gets the limit ±3
            clipped = x / np.hypot(1.0, x / CLIP)
        return np.where(np.isfinite(clipped), clipped, np.sign(x) * CLIP)
    return x  # standard; none has center 0 and scale 1


def unscale(values: np.ndarray, how: str, center: float, spread: float, quantiles: list[float] | None) -> np.ndarray:
    """The inverse of :func:`scale`: model-space ``values`` (N,) back in the column's units.

    Robust values at or beyond ±3 (never produced by scaling, but a generator may) map to the largest
    finite values; quantile values map into the training range (the transform clips there)."""
    values = np.asarray(values, dtype=np.float64)
    if how == "quantile":
        u = torch.special.ndtr(torch.from_numpy(values)).numpy()
        return np.interp(u, np.linspace(0, 1, len(quantiles)), np.asarray(quantiles))
    if how == "robust":
        y = np.clip(values, -CLIP * (1 - 1e-9), CLIP * (1 - 1e-9))
        values = y / np.sqrt(1 - (y / CLIP) ** 2)
    return values * spread + center
