"""A CNN reads each frame, a recurrent network reads the frames in order: the Long-term Recurrent
Convolutional Network (LRCN) of Donahue et al. 2015, "Long-term Recurrent Convolutional Networks
for Visual Recognition and Description".

Inputs are ``video`` batches (B, T, C, H, W). A small convolutional encoder (conv → batch norm →
ReLU → 2x2 pooling per block, then a global average pool) turns every frame into an embedding; all
B * T frames go through it as one batch. A GRU or LSTM then runs over the T embeddings, and its
last hidden state (or the mean over frames) feeds the head. Besides the model contract the family
exposes ``forward_sequence`` (every frame's hidden state) and, when unidirectional,
``init_state`` / ``step`` to read a stream one frame at a time with the same result.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from . import register_family
from .recurrent import RecurrentReader

__all__ = ["CNNRNN", "CNNRNNConfig", "FrameEncoder"]


class CNNRNNConfig(ModelConfig):
    family: Literal["cnn_rnn"] = "cnn_rnn"
    channels: list[PositiveInt] = Field([16, 32], min_length=1, description="per-frame CNN: output channels of each conv block")
    kernel_size: int = Field(3, ge=1, description="per-frame CNN: convolution kernel size (odd keeps the size)")
    batch_norm: bool = Field(True, description="per-frame CNN: batch normalization after each convolution")
    cell: Literal["gru", "lstm"] = Field("gru", description="the recurrent cell reading the frame embeddings")
    hidden: int = Field(64, ge=1, description="recurrent hidden units per direction in each layer")
    layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="also read the frames backwards (no frame-by-frame step)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between stacked recurrent layers (needs layers > 1)")
    pooling: Literal["last", "mean"] = Field("last", description="final hidden state, or the mean over frames")


class FrameEncoder(nn.Module):
    """(N, C, H, W) frames → (N, channels[-1]) embeddings: conv blocks, then a global average pool."""

    def __init__(self, in_channels: int, height: int, width: int, channels: list[int], kernel_size: int,
                 batch_norm: bool):
        super().__init__()
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks.append(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                    bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(out_channels))
            blocks.append(nn.ReLU())
            # pool only while the map is large enough: 8x8 digits survive three blocks
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.body = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = in_channels

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(frames))  # (N, out_features)


@register_family("cnn_rnn")
class CNNRNN(RecurrentReader):
    """LRCN: a per-frame CNN, then a GRU or LSTM over the frames (video classification/regression)."""

    accepts = frozenset({"video"})
    Config = CNNRNNConfig

    def __init__(self, config: CNNRNNConfig, spec):
        super().__init__(config, spec)
        _, channels, height, width = spec.input_shape  # (T, C, H, W)
        self.encoder = FrameEncoder(channels, height, width, config.channels, config.kernel_size, config.batch_norm)
        self._build_reader(nn.GRU if config.cell == "gru" else nn.LSTM, self.encoder.out_features, config)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) → (B, T, E): every frame through the CNN in one batch of B * T images."""
        B, T = x.shape[:2]
        return self.encoder(x.reshape(B * T, *x.shape[2:])).view(B, T, -1)

    def embed_step(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame per sample, (B, C, H, W) → (B, E). In eval mode (batch norm on its running
        statistics) a frame's embedding does not depend on the other frames, so stepping through a
        stream equals ``forward_sequence`` position by position."""
        return self.encoder(frame)
