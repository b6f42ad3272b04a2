"""A plugin's model family: a linear model over flattened inputs, registered as ``toy_linear``.

Importing this module is all a plugin does: the decorators are layerwise's public API.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from layerwise import LayerwiseModel, ModelConfig, register_family


class ToyLinearConfig(ModelConfig):
    family: Literal["toy_linear"] = "toy_linear"
    scale: float = Field(1.0, gt=0, description="multiplies the inputs before the linear layer")


@register_family("toy_linear")
class ToyLinear(LayerwiseModel):
    """Flattened inputs times ``scale``, then one linear layer as the head."""

    accepts = frozenset({"tabular", "image"})
    Config = ToyLinearConfig

    def __init__(self, config: ToyLinearConfig, spec):
        super().__init__(config, spec)
        width = 1
        for size in spec.input_shape:
            width *= size
        self.head = nn.Linear(width, spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float() * self.config.scale  # (B, features)
