"""Recurrent networks: the Elman RNN (Elman 1990, "Finding Structure in Time"), the LSTM (Hochreiter &
Schmidhuber 1997, "Long Short-Term Memory") and the GRU (Cho et al. 2014, "Learning Phrase
Representations using RNN Encoder-Decoder for Statistical Machine Translation").

The three families differ only in the cell, so one module, :class:`Recurrent`, is built on torch's
fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (cuDNN on a GPU) and each family is a two-line variant.
Besides the model contract, a recurrent model exposes ``forward_sequence`` (every step's hidden
state) and, when unidirectional, ``init_state`` / ``step`` to run one time step at a time.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from . import LayerwiseModel, register_family
from .layers import SequenceInput

# the state carried between steps: h (layers * directions, B, hidden), or (h, c) for an LSTM
RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentConfig(ModelConfig):
    """Hyperparameters shared by the rnn, lstm and gru families."""

    embedding: int = Field(64, ge=1, description="width of the input embedding (token ids) or projection (features)")
    hidden: int = Field(128, ge=1, description="hidden units per direction in each layer")
    layers: int = Field(2, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="also read the sequence backwards (no step-by-step generation)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between stacked layers (needs layers > 1)")
    pooling: Literal["last", "mean"] = Field("last", description="final hidden state, or the mean over steps")


class RNNConfig(RecurrentConfig):
    family: Literal["rnn"] = "rnn"
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description="the Elman cell's non-linearity")


class LSTMConfig(RecurrentConfig):
    family: Literal["lstm"] = "lstm"


class GRUConfig(RecurrentConfig):
    family: Literal["gru"] = "gru"


class RecurrentReader(LayerwiseModel):
    """A fused torch recurrent network over per-step embeddings, read out by pooling, then the head.

    Subclasses build ``self.rnn`` with :meth:`_build_reader` and say how inputs become embeddings:
    :meth:`embed` for a whole sequence (B, T, ...) -> (B, T, E), :meth:`embed_step` for one step
    (B, ...) -> (B, E). The readout, ``forward_sequence`` and the step-by-step form live here once
    (the rnn/lstm/gru families embed ids or features; ``cnn_rnn`` encodes video frames with a CNN).
    """

    def _build_reader(self, cell: type[nn.RNNBase], input_width: int, config, **extra) -> None:
        # torch applies dropout between layers only, and warns when there is a single layer
        # recorded, not read off self.rnn: a quantized LSTM (layerwise compress) is no nn.LSTM instance
        self.carries_cell_state = cell is nn.LSTM
        self.rnn = cell(input_width, config.hidden, num_layers=config.layers, batch_first=True,
                        bidirectional=config.bidirectional, dropout=config.dropout if config.layers > 1 else 0.0,
                        **extra)
        self.directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(config.hidden * self.directions, self.spec.num_outputs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_step(self, x_t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Every step's top-layer hidden state: (B, T, hidden * directions)."""
        output, _ = self.rnn(self.embed(x))
        return output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        output = self.forward_sequence(x)  # (B, T, hidden * directions)
        if self.config.pooling == "mean":
            return output.mean(dim=1)
        hidden = self.config.hidden
        forward_last = output[:, -1, :hidden]  # the forward direction ends at the last step
        if self.directions == 1:
            return forward_last
        backward_last = output[:, 0, hidden:]  # the backward direction ends at the first step
        return torch.cat([forward_last, backward_last], dim=1)  # (B, 2 * hidden)

    # -- one step at a time (generation, streams) -------------------------------------------------
    def init_state(self, batch_size: int) -> RecurrentState:
        """The zero state before the first step."""
        self._check_unidirectional()
        weight = self.head.weight
        h = torch.zeros(self.config.layers, batch_size, self.config.hidden, device=weight.device, dtype=weight.dtype)
        return (h, torch.zeros_like(h)) if self.carries_cell_state else h

    def step(self, x_t: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """One time step: ``x_t`` is one step's input (a token id, a feature vector or a frame per
        sample); returns (B, hidden) and the new state.

        >>> state = model.init_state(4)                          # doctest: +SKIP
        >>> for t in range(T): h, state = model.step(x[:, t], state)  # doctest: +SKIP
        """
        self._check_unidirectional()
        output, state = self.rnn(self.embed_step(x_t).unsqueeze(1), state)  # (B, 1, hidden)
        return output[:, 0], state

    def _check_unidirectional(self) -> None:
        if self.directions != 1:
            raise ModelError(f"model.bidirectional: a bidirectional {self.family} reads the whole sequence at once, so "
                             f"it cannot run step by step; set model.bidirectional: false to generate")


class Recurrent(RecurrentReader):
    """Stacked recurrent layers over embedded inputs; the last (or mean) hidden state feeds the head."""

    accepts = frozenset({"sequence", "tokens"})
    cell: ClassVar[type[nn.RNNBase]] = nn.RNN

    def __init__(self, config: RecurrentConfig, spec):
        super().__init__(config, spec)
        self.inputs = SequenceInput(spec, config.embedding)
        extra = {"nonlinearity": config.nonlinearity} if isinstance(config, RNNConfig) else {}
        self._build_reader(self.cell, config.embedding, config, **extra)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.inputs(x)  # (B, T, embedding)

    def embed_step(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.inputs(x_t)  # (B, embedding)


@register_family("rnn")
class RNN(Recurrent):
    """Elman recurrent network (tanh or ReLU cell) over sequences or token ids."""

    Config = RNNConfig
    cell = nn.RNN


@register_family("lstm")
class LSTM(Recurrent):
    """Long short-term memory network over sequences or token ids."""

    Config = LSTMConfig
    cell = nn.LSTM


@register_family("gru")
class GRU(Recurrent):
    """Gated recurrent unit network over sequences or token ids."""

    Config = GRUConfig
    cell = nn.GRU
