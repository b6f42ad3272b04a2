"""Convolutional network (LeCun et al. 1998), in the VGG style of stacked 3x3 convolutions
(Simonyan & Zisserman 2015) with batch normalization (Ioffe & Szegedy 2015) and a global-pool head."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from . import LayerwiseModel, register_family
from .layers import activation


class CNNConfig(ModelConfig):
    family: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field([32, 64], description="output channels of each conv block")
    convs_per_block: int = Field(2, ge=1, description="3x3 convolutions in each block")
    kernel_size: int = Field(3, ge=1, description="convolution kernel size (odd keeps the size)")
    pool: Literal["max", "avg", "none"] = Field("max", description="2x2 pooling after each block")
    batch_norm: bool = Field(True, description="batch normalization after each convolution")
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu"] = Field("relu", description="non-linearity")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before the head")
    global_pool: Literal["avg", "max", "flatten"] = Field(
        "avg", description="how the last feature map becomes a vector"
    )
    head_hidden: int | None = Field(None, ge=1, description="optional hidden layer in the head")


@register_family("cnn")
class CNN(LayerwiseModel):
    """Blocks of conv → batch norm → activation, 2x2 pooling, a global-pool classifier head."""

    accepts = frozenset({"image"})
    Config = CNNConfig

    def __init__(self, config: CNNConfig, spec):
        super().__init__(config, spec)
        in_ch, height, width = spec.input_shape
        blocks: list[nn.Module] = []
        for out_ch in config.channels:
            for _ in range(config.convs_per_block):
                blocks.append(nn.Conv2d(in_ch, out_ch, config.kernel_size, padding=config.kernel_size // 2,
                                        bias=not config.batch_norm))
                if config.batch_norm:
                    blocks.append(nn.BatchNorm2d(out_ch))
                blocks.append(activation(config.activation))
                in_ch = out_ch
            # pool only while the map is large enough: 8x8 digits survive three blocks
            if config.pool != "none" and min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2))
                height, width = height // 2, width // 2
        self.body = nn.Sequential(*blocks)
        if config.global_pool == "flatten":
            self.pool = nn.Flatten()
            features = in_ch * height * width
        else:
            pool = nn.AdaptiveAvgPool2d(1) if config.global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
            self.pool = nn.Sequential(pool, nn.Flatten())
            features = in_ch
        neck: list[nn.Module] = [nn.Dropout(config.dropout)] if config.dropout else []
        if config.head_hidden:
            neck += [nn.Linear(features, config.head_hidden), activation(config.activation)]
            neck += [nn.Dropout(config.dropout)] if config.dropout else []
            features = config.head_hidden
        self.neck = nn.Sequential(*neck)
        self.head = nn.Linear(features, spec.num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.pool(self.body(x)))  # (B, C) after pooling
