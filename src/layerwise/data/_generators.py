"""Synthetic series for forecasting examples and tests (the ``timeseries`` source's ``builtin`` key).

Built-in series: ``sine_mixture`` (three sines of periods 24, 60 and 155 steps with seeded phases and
Gaussian noise) and ``mackey_glass``, the delay differential equation of Mackey & Glass (1977,
"Oscillation and chaos in physiological control systems")
``dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t)`` with the standard chaotic parameters
tau=17, beta=0.2, gamma=0.1, n=10, integrated with fourth-order Runge-Kutta at dt=0.1 and sampled
every time unit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mackey_glass", "sine_mixture"]


def sine_mixture(length: int = 3000, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """Three sines (periods 24, 60, 155 steps; amplitudes 1, 0.6, 0.4) with seeded phases and noise.

    >>> sine_mixture(5, seed=1).shape
    (5,)
    """
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    series = sum(a * np.sin(2 * np.pi * t / p + ph) for a, p, ph in zip((1.0, 0.6, 0.4), (24, 60, 155), phases))
    return series + noise * rng.standard_normal(length)


def mackey_glass(length: int = 3000, seed: int = 0, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1,
                 n: float = 10.0, dt: float = 0.1, sample_every: float = 1.0, warmup: float = 500.0) -> np.ndarray:
    """The Mackey-Glass series, one value per ``sample_every`` time units.

    RK4 with step ``dt``; the delayed value x(t - tau) at a half step is the mean of the two stored
    neighbours (the grid holds tau / dt points per delay). The initial history is 1.2 plus seeded
    uniform noise in [-0.1, 0.1]; the first ``warmup`` time units (the transient) are discarded.

    >>> x = mackey_glass(100)
    >>> bool(0 < x.min() and x.max() < 1.5)
    True
    """
    delay = round(tau / dt)
    every = round(sample_every / dt)
    rng = np.random.default_rng(seed)
    steps = round(warmup / dt) + length * every
    x = np.empty(delay + steps + 1)
    x[: delay + 1] = 1.2 + rng.uniform(-0.1, 0.1, size=delay + 1)
    hist = x.tolist()  # Python floats: a scalar loop is several times faster on a list than on an array

    def f(xt: float, xd: float) -> float:
        return beta * xd / (1.0 + xd ** n) - gamma * xt

    for i in range(delay, delay + steps):
        xt, d0, d1 = hist[i], hist[i - delay], hist[i - delay + 1]
        dh = 0.5 * (d0 + d1)
        k1 = f(xt, d0)
        k2 = f(xt + 0.5 * dt * k1, dh)
        k3 = f(xt + 0.5 * dt * k2, dh)
        k4 = f(xt + dt * k3, d1)
        hist[i + 1] = xt + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    sampled = np.asarray(hist[delay + round(warmup / dt) + every::every][:length])
    return sampled
