"""The Python API in one script: train, evaluate, predict, reload, your own module, cross-validation.

    python examples/python_api.py            # from the repository root; seconds on a laptop CPU

Every call here is public: ``layerwise.train``, ``Run.evaluate``, ``Run.predict``,
``Run.predict_to_csv``, ``layerwise.load_run`` and ``layerwise.cross_validate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import layerwise

RUNS = Path("runs")  # where run directories go (the CLI's --runs-dir)
CSV = "examples/data/customers.csv"

# 1. Train from a YAML file. Keyword overrides use double underscores for dots
#    (train__epochs is --set train.epochs); `overrides` takes the CLI's KEY=VALUE strings.
run = layerwise.train("examples/csv.yaml", runs_dir=RUNS, quiet=True,
                      train__epochs=20, overrides=["train.lr=0.005"])
print(f"trained {run.path}")
print("test metrics written at the end of training:", {k: round(v, 4) for k, v in run.metrics["metrics"].items()
                                                       if k in ("accuracy", "f1_macro", "roc_auc")})

# 2. Evaluate again, on any split, or on another labelled file (data=...).
val = run.evaluate(split="val")
print(f"val accuracy {val['accuracy']:.4f}; confusion matrix {val.details['confusion_matrix']}")

# 3. Predict. A DataFrame (or a CSV path) goes through the preprocessing saved with the run;
#    missing or unseen values are handled the same way as in training. No target column needed.
new_customers = pd.read_csv(CSV).drop(columns=["churned"]).head(5)
pred = run.predict(new_customers)
classes = run.preprocessing.classes  # original label values; pred["label"] holds indices into it
print("predicted churn:", [classes[i] for i in pred["label"]], "p(churn):", np.round(pred["proba"][:, 1], 3))
out = run.predict_to_csv(CSV, RUNS / "churn-predictions.csv")  # id, true, pred, prob_<class>
print(f"predictions for the whole file: {out}")

# 4. Reload a run from its directory alone (config, preprocessing and weights are all in it).
again = layerwise.load_run(run.path)
assert np.allclose(again.predict(new_customers)["proba"], pred["proba"], atol=1e-6)
print(f"reloaded {again!r}: same predictions")

# 5. Your own nn.Module instance, trained by the same loop on an experiment given as a dict.
sys.path.insert(0, str(Path(__file__).parent))  # so the class is importable as custom_module:TinyNet
from custom_module import TinyNet  # noqa: E402

experiment = {"name": "digits-own-module", "data": {"source": "builtin", "name": "digits"},
              "train": {"epochs": 8, "lr": 0.003, "scheduler": "onecycle"}}
net = TinyNet(input_shape=(1, 8, 8), num_outputs=10)  # the digits: 1 channel, 8x8, 10 classes
own = layerwise.train(experiment, model=net, runs_dir=RUNS, quiet=True)
print(f"own module: test accuracy {own.metrics['metrics']['accuracy']:.4f}")
# Raw inputs work too: uint8 images (N, C, H, W), normalized with the run's saved statistics.
images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8).numpy()
print("labels for 3 noise images:", own.predict(images)["label"])
# load_run(own.path, trust_code=True).model would import its saved target "custom_module:TinyNet"
# (user code: hence trust_code) and build it with the default constructor arguments; when yours
# differ, pass an instance to load the weights into, which imports nothing:
reloaded = layerwise.load_run(own.path).load_model(TinyNet(input_shape=(1, 8, 8), num_outputs=10))
print(f"reloaded module: {type(reloaded).__name__} around {type(reloaded.module).__name__}")

# 6. k-fold cross-validation: preprocessing is refitted inside each fold; returns mean and std.
cv = layerwise.cross_validate("examples/csv.yaml", folds=3, overrides=["train.epochs=15"])
for metric, mean, std in cv.summary():
    if metric in ("accuracy", "roc_auc"):
        print(f"3-fold {metric}: {mean:.4f} ± {std:.4f}")
