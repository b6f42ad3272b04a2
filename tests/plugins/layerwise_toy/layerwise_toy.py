"""A plugin: a model family (a linear model over flattened inputs, ``toy_linear``) and a tool
(the verb ``weight-norm``).

Importing this module is all a plugin does: the decorators are layerwise's public API.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from layerwise import (
    LayerwiseModel,
    ModelConfig,
    ToolOptions,
    option,
    register_family,
    register_tool,
)


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


class WeightNormOptions(ToolOptions):
    decimals: int = option(3, "digits after the point", ge=0)


@register_tool("weight-norm", WeightNormOptions)
def weight_norm(run, options: WeightNormOptions) -> float:
    """The L2 norm of a RUN's weights (a plugin's verb: `layerwise weight-norm RUN`)."""
    norm = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in run.model.parameters()))
    return round(float(norm), options.decimals)
