"""Add a task: one file with a Task subclass (its loss, metrics and predictions) and its own Config.

The task's options sit beside its name in the config (``task: {name: quantile_regression,
quantile: 0.9}``), validated against ``Config`` like a family's or a source's keys. Subclassing an
existing task keeps its evaluator and predictions; this one only changes the loss.

    python examples/extending/task.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse

import torch
from pydantic import Field

import layerwise
from layerwise import register_task
from layerwise.core.config import TaskConfig
from layerwise.tasks.regression import Regression


class QuantileConfig(TaskConfig):
    quantile: float = Field(0.5, gt=0, lt=1, description="the quantile predicted (0.5: the median)")


@register_task("quantile_regression")
class QuantileRegression(Regression):
    """Predict a quantile of the target with the pinball loss (Koenker & Bassett 1978)."""

    Config = QuantileConfig

    def loss(self, outputs, y):
        y = y.reshape(outputs.shape).to(outputs.dtype)
        error = y.float() - outputs.float()
        q = self.config.quantile
        return torch.maximum(q * error, (q - 1) * error).mean(), y.shape[0]


@torch.no_grad()
def _test_predictions(run):
    """The run's predictions for its own (already preprocessed) test split, on the original scale."""
    batch = run.preprocessing.inputs.batch(run.data.test.x, False, None)
    return run.task.predict(run.model.eval()(batch))["value"].numpy().ravel()


def main(runs_dir: str) -> float:
    runs = {}
    for q in (0.1, 0.9):
        runs[q] = layerwise.train({"name": f"diabetes-q{q}", "data": {"source": "builtin", "name": "diabetes"},
                                   "task": {"name": "quantile_regression", "quantile": q},
                                   "model": {"family": "mlp", "hidden": [32]},
                                   "train": {"epochs": 80, "lr": 0.003}}, runs_dir=runs_dir, quiet=True)
    low, high = (_test_predictions(runs[q]) for q in (0.1, 0.9))
    run = runs[0.1]
    y = run.preprocessing.scaler.inverse(run.data.test.y.reshape(-1, 1).float()).numpy().ravel()
    covered = float(((y >= low) & (y <= high)).mean())
    print(f"share of test targets between the 0.1 and 0.9 quantile predictions: {covered:.2f} (ideal 0.8)")
    return covered


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) > 0.5
