"""A residual MLP for tables: the "ResNet" baseline of Gorishniy et al. 2021 ("Revisiting Deep Learning
Models for Tabular Data") with the defaults of RealMLP (Holzmüller et al. 2024, "Better by Default:
Strong Pre-Tuned MLPs and Boosted Trees on Tabular Data").

From Gorishniy et al.: a linear layer to the width, then residual blocks
``x + Dropout(Linear(Dropout(act(Linear(Norm(x))))))`` and a ``Norm -> act`` before the head.
From RealMLP, the parts that make it strong without tuning:

* numeric features embedded (``numeric_embedding: periodic`` by default, Gorishniy et al. 2022;
  RealMLP's PBLD is a periodic embedding too, with sigma 0.1);
* a learnable diagonal *scaling layer* on the input vector (one weight per input, starting at 1):
  the network can turn an unhelpful feature down, or a useful one up, faster than the first
  linear layer's weights would;
* width 256 in 3 blocks; SELU for classification and Mish for regression (``activation: auto``).

Every block starts as the identity (its output layer at zero), so a deep stack trains like a
shallow one at first.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from . import LayerwiseModel, register_family
from .numeric_embeddings import FlatEmbeddingConfig, NumericEmbedding, TabularFeatures

__all__ = ["ResMLP", "ResMLPConfig"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "selu": nn.SELU, "mish": nn.Mish}


class ResMLPConfig(FlatEmbeddingConfig):
    family: Literal["resmlp"] = "resmlp"
    numeric_embedding: NumericEmbedding = Field("periodic", description="embedding of each numeric feature: none, "
                                                "periodic (PLR) or piecewise (PLE on the data's quantile bins)")
    width: int = Field(256, ge=1, description="width of the residual stream")
    blocks: int = Field(3, ge=1, description="residual blocks (depth)")
    hidden_mult: float = Field(2.0, gt=0, description="hidden width of each block, as a multiple of width")
    dropout: float = Field(0.15, ge=0, lt=1, description="dropout inside each block, after its activation")
    residual_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each block's output, before the skip")
    activation: Literal["auto", "selu", "mish", "silu", "relu", "gelu"] = Field(
        "auto", description="non-linearity; auto: SELU for classification, Mish for regression (RealMLP)")
    norm: Literal["layer", "batch", "none"] = Field("layer", description="normalization at the start of each block "
                                                    "and before the head (batch: the paper's, needs batches > 1)")
    scaling: bool = Field(True, description="RealMLP's learnable per-input scaling layer in front of the network")


class Block(nn.Module):
    """``x + Dropout(Linear(Dropout(act(Linear(Norm(x))))))``: (B, width) -> (B, width)."""

    def __init__(self, width: int, hidden: int, act: type[nn.Module], norm: str, dropout: float,
                 residual_dropout: float):
        super().__init__()
        self.norm = _norm(norm, width)
        self.linear1 = nn.Linear(width, hidden)
        self.act = act()
        self.drop = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, width)
        self.residual_drop = nn.Dropout(residual_dropout)
        nn.init.zeros_(self.linear2.weight)  # the block starts as the identity
        nn.init.zeros_(self.linear2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_drop(self.linear2(self.drop(self.act(self.linear1(self.norm(x))))))


def _norm(kind: str, width: int) -> nn.Module:
    return {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d}[kind](width) if kind != "none" else nn.Identity()


@register_family("resmlp")
class ResMLP(LayerwiseModel):
    """Residual MLP for tables with RealMLP-style defaults: periodic numeric embeddings, a scaling layer."""

    accepts = frozenset({"tabular"})
    Config = ResMLPConfig

    def __init__(self, config: ResMLPConfig, spec):
        super().__init__(config, spec)
        self.inputs = TabularFeatures(spec, config.numeric_embedding, config)  # (B, F) -> (B, D)
        width = config.width
        activation = config.activation
        if activation == "auto":
            activation = "mish" if spec.target == "numeric" else "selu"
        act = ACTIVATIONS[activation]
        # one weight per input, starting at 1: RealMLP's diagonal scaling layer
        self.scale = nn.Parameter(torch.ones(self.inputs.out_features)) if config.scaling else None
        self.stem = nn.Linear(self.inputs.out_features, width)
        hidden = max(1, round(width * config.hidden_mult))
        self.blocks = nn.Sequential(*(Block(width, hidden, act, config.norm, config.dropout, config.residual_dropout)
                                      for _ in range(config.blocks)))
        self.norm = _norm(config.norm, width)
        self.act = act()
        self.head = nn.Linear(width, spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inputs(x)  # (B, D)
        if self.scale is not None:
            h = h * self.scale
        h = self.blocks(self.stem(h))  # (B, width)
        return self.act(self.norm(h))  # (B, width)
