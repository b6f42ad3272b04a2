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
from pydantic import Field
from torch import nn

from ..config import ModelConfig
from ..errors import ModelError
from . import LayerwiseModel, register_family

__all__ = ["CNNRNN", "CNNRNNConfig", "FrameEncoder"]

# carried between frames: h (layers * directions, B, hidden), or (h, c) for an LSTM
RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CNNRNNConfig(ModelConfig):
    family: Literal["cnn_rnn"] = "cnn_rnn"
    channels: list[int] = Field([16, 32], min_length=1, description="per-frame CNN: output channels of each conv block")
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
class CNNRNN(LayerwiseModel):
    """LRCN: a per-frame CNN, then a GRU or LSTM over the frames (video classification/regression)."""

    accepts = frozenset({"video"})
    Config = CNNRNNConfig

    def __init__(self, config: CNNRNNConfig, spec):
        super().__init__(config, spec)
        _, channels, height, width = spec.input_shape  # (T, C, H, W)
        self.encoder = FrameEncoder(channels, height, width, config.channels, config.kernel_size, config.batch_norm)
        cell = nn.GRU if config.cell == "gru" else nn.LSTM
        # torch applies dropout between layers only, and warns when there is a single layer
        self.rnn = cell(self.encoder.out_features, config.hidden, num_layers=config.layers, batch_first=True,
                        bidirectional=config.bidirectional, dropout=config.dropout if config.layers > 1 else 0.0)
        self.directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(config.hidden * self.directions, spec.num_outputs)

    def embed_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) → (B, T, E): every frame through the CNN in one batch of B * T images."""
        B, T = x.shape[:2]
        return self.encoder(x.reshape(B * T, *x.shape[2:])).view(B, T, -1)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Every frame's top-layer hidden state: (B, T, hidden * directions)."""
        output, _ = self.rnn(self.embed_frames(x))
        return output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        output = self.forward_sequence(x)  # (B, T, hidden * directions)
        if self.config.pooling == "mean":
            return output.mean(dim=1)
        hidden = self.config.hidden
        forward_last = output[:, -1, :hidden]  # the forward direction ends at the last frame
        if self.directions == 1:
            return forward_last
        backward_last = output[:, 0, hidden:]  # the backward direction ends at the first frame
        return torch.cat([forward_last, backward_last], dim=1)  # (B, 2 * hidden)

    # -- one frame at a time (a stream) -------------------------------------------------------------
    def init_state(self, batch_size: int) -> RecurrentState:
        """The zero state before the first frame."""
        self._check_unidirectional()
        weight = self.head.weight
        h = torch.zeros(self.config.layers, batch_size, self.config.hidden, device=weight.device, dtype=weight.dtype)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def step(self, frame: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """One frame (B, C, H, W): returns the hidden state (B, hidden) and the new state.

        In eval mode this equals ``forward_sequence`` position by position (batch norm then uses its
        running statistics, so a frame's embedding does not depend on the other frames).

        >>> state = model.init_state(4)                                    # doctest: +SKIP
        >>> for t in range(T): h, state = model.step(video[:, t], state)  # doctest: +SKIP
        >>> logits = model.forward_head(h)                                 # doctest: +SKIP
        """
        self._check_unidirectional()
        output, state = self.rnn(self.encoder(frame).unsqueeze(1), state)  # (B, 1, hidden)
        return output[:, 0], state

    def _check_unidirectional(self) -> None:
        if self.directions != 1:
            raise ModelError("model.bidirectional: a bidirectional cnn_rnn reads the whole sequence at once, so it "
                             "cannot run frame by frame; set model.bidirectional: false to step")
