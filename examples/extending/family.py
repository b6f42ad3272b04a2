"""Add a model family: one file with a Config and a LayerwiseModel, registered by name.

The contract: ``forward_features(x) -> (B, F)`` and ``self.head``, a linear layer from F to
``spec.num_outputs``; ``accepts`` names the input kinds. Every tool (explain, export, compress...)
then works on the family with no change elsewhere.

    python examples/extending/family.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
from typing import Literal

import torch
from pydantic import Field
from torch import nn

import layerwise
from layerwise import LayerwiseModel, ModelConfig, register_family


class LogisticConfig(ModelConfig):
    family: Literal["logistic"] = "logistic"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the inputs")


@register_family("logistic")
class Logistic(LayerwiseModel):
    """Multinomial logistic regression: the inputs themselves are the features."""

    accepts = frozenset({"tabular"})
    Config = LogisticConfig

    def __init__(self, config: LogisticConfig, spec):
        super().__init__(config, spec)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(spec.input_shape[0], spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x.float())  # (B, F)


def main(runs_dir: str) -> float:
    run = layerwise.train({"name": "iris-logistic", "data": {"source": "builtin", "name": "iris"},
                           "model": {"family": "logistic", "dropout": 0.1},
                           "train": {"epochs": 30, "lr": 0.05, "batch_size": 16}}, runs_dir=runs_dir, quiet=True)
    accuracy = run.metrics["metrics"]["accuracy"]
    print(f"logistic regression on iris: test accuracy {accuracy:.3f} ({run.path})")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) > 0.8
