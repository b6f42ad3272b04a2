"""Generate examples/data/moons.npz: scikit-learn's two interleaving half-moons (seeded).

    python examples/data/make_moons.py

The archive holds ``x`` (N, 2) float32 features and ``y`` (N,) int labels for training, plus
``x_test`` and ``y_test``, which the ``npz`` source uses as the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import make_moons

if __name__ == "__main__":
    x, y = make_moons(n_samples=1000, noise=0.2, random_state=0)
    x = x.astype(np.float32)
    out = Path(__file__).with_name("moons.npz")
    np.savez_compressed(out, x=x[:800], y=y[:800], x_test=x[800:], y_test=y[800:])
    print(f"wrote {out}")
