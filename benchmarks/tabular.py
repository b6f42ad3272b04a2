"""Tabular data: layerwise's MLP vs scikit-learn's LogisticRegression on the same split.

Both see exactly the same training and test rows, preprocessed the same way (layerwise's pipeline:
imputation, standardization and one-hot encoding fitted on the training split), so the comparison
is between the models alone. Prints accuracy and ROC-AUC of each, medians over seeds.

    python benchmarks/tabular.py
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

import layerwise
from layerwise.data import load_data

ROOT = Path(__file__).resolve().parents[1]

SETS = {
    "customers.csv (string columns, missing values, 0/1 target)": {
        "source": "csv", "path": str(ROOT / "examples" / "data" / "customers.csv"), "target": "churned"},
    "breast_cancer (builtin)": {"source": "builtin", "name": "breast_cancer"},
    "wine (builtin, 3 classes)": {"source": "builtin", "name": "wine"},
}

MODEL = {"family": "mlp", "hidden": [64, 32], "dropout": 0.2}
TRAIN = {"epochs": 60, "batch_size": 32, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01,
         "scheduler": "cosine", "early_stopping": {"monitor": "val_loss", "patience": 12}, "progress": False}


def main(seeds: tuple[int, ...] = (0, 1, 2), runs_dir: str = "/tmp/layerwise-bench-tabular") -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    for title, data in SETS.items():
        rows = {"layerwise mlp": {"accuracy": [], "roc_auc": []}, "sklearn logreg": {"accuracy": [], "roc_auc": []}}
        for seed in seeds:
            config = {"name": "bench-tabular", "data": {**data, "split_seed": seed, "test_fraction": 0.25},
                      "model": MODEL, "train": {**TRAIN, "seed": seed}}
            run = layerwise.train(config, runs_dir=runs_dir, quiet=True)
            metrics = run.metrics["metrics"]
            rows["layerwise mlp"]["accuracy"].append(metrics["accuracy"])
            rows["layerwise mlp"]["roc_auc"].append(metrics["roc_auc"])
            # the very same split and preprocessing for the reference: train = train + val
            bundle = load_data(run.config.data, run.config.task)
            x_train = np.concatenate([bundle.train.x.numpy(), bundle.val.x.numpy()])
            y_train = np.concatenate([bundle.train.y.numpy(), bundle.val.y.numpy()])
            ref = LogisticRegression(max_iter=5000).fit(x_train, y_train)
            proba = ref.predict_proba(bundle.test.x.numpy())
            y_test = bundle.test.y.numpy()
            rows["sklearn logreg"]["accuracy"].append(accuracy_score(y_test, proba.argmax(1)))
            auc = roc_auc_score(y_test, proba[:, 1]) if proba.shape[1] == 2 else roc_auc_score(
                y_test, proba, multi_class="ovr")
            rows["sklearn logreg"]["roc_auc"].append(auc)
        print(f"{title}  (test split 25%, seeds {list(seeds)}, medians)")
        for name, values in rows.items():
            print(f"  {name:16s} accuracy {statistics.median(values['accuracy']):.4f}   "
                  f"roc_auc {statistics.median(values['roc_auc']):.4f}   "
                  f"(per seed: {', '.join(f'{v:.3f}' for v in values['accuracy'])})")


if __name__ == "__main__":
    main()
