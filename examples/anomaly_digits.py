"""Anomaly detection with an autoencoder and a VAE: train on the digits 1-9, score unseen digits and
the zeros the models never saw. Runs in about 20 seconds on a laptop CPU; no download.

    python examples/anomaly_digits.py

See docs/anomaly-detection.md. The CLI equivalent of the scoring step:
    layerwise anomaly RUN mixed.npz --out scores.csv
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import layerwise

HELD_OUT = 0  # the class the models never see: the anomalies


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="layerwise-anomaly-"))
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8) uint8
    labels = digits.target
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.nonzero(labels != HELD_OUT)[0])
    train, fresh = normal[:-150], normal[-150:]  # 150 normal digits the run never sees
    zeros = np.nonzero(labels == HELD_OUT)[0][:60]
    np.savez(work / "normal.npz", x=pixels[train], y=labels[train])
    mixed = np.concatenate([fresh, zeros])
    np.savez(work / "mixed.npz", x=pixels[mixed], y=labels[mixed])

    for family, model in (("autoencoder", {"hidden": [64], "bottleneck": 6}), ("vae", {"hidden": [64], "latent": 4})):
        run = layerwise.train({"name": f"anomaly-{family}", "data": {"source": "npz", "path": str(work / "normal.npz")},
                               "model": {"family": family, **model},
                               "train": {"epochs": 20, "lr": 0.003, "batch_size": 64, "progress": False}},
                              runs_dir=work / "runs", quiet=True)
        # labels in mixed.npz: anything outside the classes the run trained on (here: 0) is an anomaly
        result = run.anomaly(work / "mixed.npz", quantile=0.99, out=work / f"{family}_scores.csv")
        m = result.metrics
        print(f"{family:12s} ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  threshold {result.threshold:.4g}  "
              f"flagged {int(result.is_anomaly.sum())} of {len(result.scores)}  ({work / f'{family}_scores.csv'})")


if __name__ == "__main__":
    main()
