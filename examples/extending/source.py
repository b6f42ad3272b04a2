"""Add a data source: one file with a Config (its keys) and ``read`` returning the raw data.

Splitting, preprocessing, caching of the fitted preprocessing in the run directory and every later
use (predict, serve...) are the shared pipeline's: a source only says what the data is.

    python examples/extending/source.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

import layerwise
from layerwise import DataConfig, DataSource, register_source
from layerwise.data.spec import RawData


class SpiralsConfig(DataConfig):
    source: Literal["spirals"] = "spirals"
    samples: int = Field(600, ge=10, description="points in all")
    noise: float = Field(0.2, ge=0, description="std of the Gaussian noise added to each point")


@register_source("spirals")
class Spirals(DataSource):
    """Two interleaved spirals: a classic task no linear model solves."""

    Config = SpiralsConfig
    description = "two interleaved spirals (synthetic, 2 features, 2 classes)"

    def read(self, cfg: SpiralsConfig, task: str | None) -> RawData:
        rng = np.random.default_rng(cfg.split_seed)
        n = cfg.samples // 2
        angle = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        arm = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1)
        points = np.concatenate([arm, -arm]) + rng.normal(0, cfg.noise, (2 * n, 2))
        labels = np.array(["a"] * n + ["b"] * n)
        return RawData(kind="tabular", x=pd.DataFrame(points, columns=["x", "y"]), y=labels, origin="spirals")


def main(runs_dir: str) -> float:
    run = layerwise.train({"name": "spirals", "data": {"source": "spirals", "samples": 800},
                           "model": {"family": "mlp", "hidden": [64, 64]},
                           "train": {"epochs": 60, "lr": 0.01}}, runs_dir=runs_dir, quiet=True)
    accuracy = run.metrics["metrics"]["accuracy"]
    print(f"an MLP on two spirals: test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) > 0.8
