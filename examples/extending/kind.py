"""Add an input kind: one file saying what a sample is, plus the source that reads it.

Here a sample is a point cloud: (P, 2) float coordinates whose order means nothing. The kind fits
and saves its preprocessing, says which capabilities it has (continuous values, so attacks and
gradient explanations apply; no pixels, no table columns), and every layer above asks it instead
of comparing kind names. No existing family accepts point clouds, so this file also holds the
smallest permutation-invariant one, Deep Sets (Zaheer et al. 2017), and a source of circles and
squares to train it on.

    python examples/extending/kind.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

import layerwise
from layerwise import (
    DataConfig,
    DataSource,
    LayerwiseModel,
    ModelConfig,
    register_family,
    register_source,
)
from layerwise.data.kinds import Fitted, InputKind, register_kind
from layerwise.data.preprocess import register_preprocessor
from layerwise.data.spec import RawData


# -- the kind: one sample is (P, 2) points ----------------------------------------------------------
@register_preprocessor("points")
class PointsPreprocessor:
    """Centre and scale every coordinate with statistics of the training points (saved with the run)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "points", "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PointsPreprocessor":
        return cls(data["mean"], data["std"])


@register_kind("points")
class PointsKind(InputKind):
    description = "(P, 2) float32 points of a cloud, in no particular order"
    explained_as = "positions"  # one attribution per point

    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        train = np.asarray(x)[train_idx]
        pre = PointsPreprocessor(float(train.mean()), float(train.std()) or 1.0)
        return Fitted(pre, tuple(np.asarray(x).shape[1:]))


# -- a source of point clouds ---------------------------------------------------------------------
class ShapesConfig(DataConfig):
    source: Literal["shapes"] = "shapes"
    samples: int = Field(800, ge=10, description="point clouds in all, half circles and half squares")
    points: int = Field(32, ge=4, description="points per cloud")


@register_source("shapes")
class Shapes(DataSource):
    """Points on the outline of a circle or of a square, each at a random size and position."""

    Config = ShapesConfig

    def read(self, cfg: ShapesConfig, task: str | None) -> RawData:
        rng = np.random.default_rng(cfg.split_seed)
        angle = rng.uniform(0, 2 * np.pi, (cfg.samples, cfg.points))
        circle = np.stack([np.cos(angle), np.sin(angle)], -1)
        square = circle / np.abs(circle).max(-1, keepdims=True)  # the same directions, on a square
        is_square = np.arange(cfg.samples) % 2 == 1
        clouds = np.where(is_square[:, None, None], square, circle)
        clouds = clouds * rng.uniform(0.5, 2, (cfg.samples, 1, 1)) + rng.normal(0, 1, (cfg.samples, 1, 2))
        labels = np.where(is_square, "square", "circle")
        return RawData(kind="points", x=clouds.astype(np.float32), y=labels, origin="shapes")


# -- a family that accepts it -----------------------------------------------------------------------
class DeepSetsConfig(ModelConfig):
    family: Literal["deepsets"] = "deepsets"
    width: int = Field(64, ge=1, description="width of the per-point and the pooled networks")


@register_family("deepsets")
class DeepSets(LayerwiseModel):
    """rho(mean over points of phi(point)): the output does not depend on the points' order."""

    accepts = frozenset({"points"})
    Config = DeepSetsConfig

    def __init__(self, config: DeepSetsConfig, spec):
        super().__init__(config, spec)
        w = config.width
        self.phi = nn.Sequential(nn.Linear(spec.input_shape[-1], w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(2 * w, w), nn.ReLU())
        self.head = nn.Linear(w, spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.phi(x - x.mean(1, keepdim=True))  # (B, P, w), centred: where the cloud lies does not matter
        return self.rho(torch.cat([h.mean(1), h.amax(1)], dim=1))  # (B, w)


def main(runs_dir: str) -> float:
    run = layerwise.train({"name": "shapes", "data": {"source": "shapes"}, "model": {"family": "deepsets"},
                           "train": {"epochs": 30, "lr": 0.003}}, runs_dir=runs_dir, quiet=True)
    again = layerwise.load_run(run.path)  # the preprocessing comes back from data.json through the kind
    accuracy = again.evaluate()["accuracy"]
    print(f"Deep Sets on point clouds ({run.spec.kind} kind): test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) > 0.8
