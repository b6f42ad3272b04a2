"""Every tabular family on one table, each next to the baselines fitted on the same split.

    python examples/tabular_families.py

Each run is zero-config (only the family is named): the recipe picks the sizes and the training
from the table (docs/tabular.md). The linear model and HistGradientBoosting come from each run's
own metrics.json, fitted on the run's training split with its preprocessing.
"""

from __future__ import annotations

import layerwise

DATA = {"source": "csv", "path": "examples/data/customers.csv", "target": "churned", "drop": ["customer_id"]}

if __name__ == "__main__":
    rows = []
    for family in ("mlp", "resmlp", "ft_transformer", "tabm"):
        run = layerwise.train({"name": f"churn-{family}", "data": DATA, "model": {"family": family},
                               "train": {"progress": False}}, runs_dir="runs", quiet=True)
        baselines = run.metrics["baselines"]
        rows.append((family, run.metrics["metrics"]["accuracy"],
                     baselines["logistic_regression"]["metrics"]["accuracy"],
                     baselines["hist_gradient_boosting"]["metrics"]["accuracy"],
                     run.metrics["training"]["duration_s"]))
    print(f"{'family':16s} {'network':>8s} {'logistic':>9s} {'HistGB':>7s} {'seconds':>8s}   (test split accuracy)")
    for family, net, linear, boosted, seconds in rows:
        print(f"{family:16s} {net:8.3f} {linear:9.3f} {boosted:7.3f} {seconds:8.1f}")
