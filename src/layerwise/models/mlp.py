"""Feed-forward network (multi-layer perceptron; Rumelhart, Hinton & Williams 1986).

On tables, ``numeric_embedding: periodic | piecewise`` embeds each numeric feature first (Gorishniy
et al. 2022, :mod:`.numeric_embeddings`); the default, ``none``, feeds the scalars as they are.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from . import LayerwiseModel, register_family
from .layers import TabularInput, activation
from .numeric_embeddings import FlatEmbeddingConfig, TabularFeatures


class MLPConfig(FlatEmbeddingConfig):
    family: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = Field([128, 64], description="width of each hidden layer")
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu"] = Field("relu", description="non-linearity")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after each hidden layer")
    batch_norm: bool = Field(False, description="batch normalization before each activation")


@register_family("mlp")
class MLP(LayerwiseModel):
    """Fully connected layers; images are flattened, categorical columns may be embedded."""

    accepts = frozenset({"tabular", "image"})
    Config = MLPConfig

    def __init__(self, config: MLPConfig, spec):
        super().__init__(config, spec)
        # the scalars as they are (and the state_dict keys of runs saved before embeddings existed), or embedded
        self.inputs = (TabularInput(spec) if config.numeric_embedding == "none"
                       else TabularFeatures(spec, config.numeric_embedding, config))
        layers: list[nn.Module] = []
        width = self.inputs.out_features
        for size in config.hidden:
            layers.append(nn.Linear(width, size, bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(activation(config.activation))
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.inputs(x))  # (B, hidden[-1])
