"""Residual network with basic blocks (He et al. 2016, "Deep Residual Learning for Image Recognition")."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from . import LayerwiseModel, register_family


class ResNetConfig(ModelConfig):
    family: Literal["resnet"] = "resnet"
    blocks: list[PositiveInt] = Field([2, 2, 2], description="basic blocks per stage; each stage after the first halves the size")
    width: int = Field(16, ge=1, description="channels of the first stage (doubled at each stage)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (projected when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.skip = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(x))


@register_family("resnet")
class ResNet(LayerwiseModel):
    """A 3x3 stem, stages of basic residual blocks, global average pooling, a linear head."""

    accepts = frozenset({"image"})
    Config = ResNetConfig

    def __init__(self, config: ResNetConfig, spec):
        super().__init__(config, spec)
        in_ch, height, _ = spec.input_shape
        self.stem = nn.Sequential(nn.Conv2d(in_ch, config.width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(config.width), nn.ReLU(inplace=True))
        stages, ch = [], config.width
        for i, count in enumerate(config.blocks):
            out_ch = config.width * 2**i
            # downsample from the second stage on, while the map is at least 2 pixels across
            stride = 2 if i > 0 and height >= 2 else 1
            height = (height + 1) // 2 if stride == 2 else height
            for j in range(count):
                stages.append(BasicBlock(ch, out_ch, stride if j == 0 else 1))
                ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(ch, spec.num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.stages:
            nn.init.zeros_(block.bn2.weight)  # each block starts as identity (Goyal et al. 2017)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.stages(self.stem(x))))  # (B, C)
