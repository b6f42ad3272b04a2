"""The log-space parallel scan and the blocks shared by the minimal RNN families (mingru, minlstm).

The scan computes ``h_t = a_t * h_{t-1} + b_t`` for every ``t`` at once (Heinsen 2023, "Efficient
Parallelization of a Ubiquitous Sequential Computation", arXiv:2311.06281): with
``a*_t = sum_{k<=t} log a_k`` it is ``log h_t = a*_t + logcumsumexp_k(log b_k - a*_k)``, two
cumulative sums instead of a ``T``-step loop, and never a product of ``T`` numbers below one (it
stays in log space, so long sequences neither underflow nor overflow). The coefficients must be
positive; ``g`` and ``log_g`` are the positive activation of Feng et al. 2024, "Were RNNs All We
Needed?" (arXiv:2410.01201), appendix: ``g(x) = x + 0.5`` for ``x >= 0`` and ``sigmoid(x)`` below.

The families differ only in their cell (how ``log a`` and ``log b`` come from ``x_t``), so the
residual stack around the cells, the config keys and the recurrent ``step`` interface live here,
once, and each family file holds its cell, its config and its registration.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from . import LayerwiseModel
from .layers import SequenceInput, pool_sequence

__all__ = ["MinimalRNN", "MinimalRNNConfig", "g", "log_g", "parallel_scan_log"]


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """``log(g(x))`` without forming ``g(x)`` first: ``log(sigmoid(x)) = -softplus(-x)`` below 0."""
    # relu keeps the log's argument >= 0.5 in the branch torch.where discards, so no NaN gradient leaks
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def parallel_scan_log(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along dim 1, for all ``t``, from ``log a`` and ``log b`` (B, T, H).

    ``h0`` (B, H) is the state before the first step (zeros when None; it must be >= 0). Computed
    in float32 whatever the input dtype (a cumulative sum in bfloat16 loses the sequence's tail),
    returned in the input dtype. Rounding grows with ``|a*_t|``, the log of the coefficients'
    product: in float32 the result matches the step-by-step loop to ~2e-5 over 256 steps and
    ~4e-4 over 4096 steps of minGRU with random weights.

    >>> a, b = torch.full((1, 3, 1), 0.5), torch.ones(1, 3, 1)
    >>> [round(v, 4) for v in parallel_scan_log(a.log(), b.log()).flatten().tolist()]
    [1.0, 1.5, 1.75]
    """
    dtype = log_b.dtype
    log_a, log_b = log_a.float(), log_b.float()
    if h0 is not None:
        # h0 is the value term of a step 0 whose coefficient is 1 (log 0)
        log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a], dim=1)
        log_b = torch.cat([h0.float().log().unsqueeze(1), log_b], dim=1)
    a_star = torch.cumsum(log_a, dim=1)  # (B, T, H): log of the product of coefficients so far
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)
    if h0 is not None:
        log_h = log_h[:, 1:]
    return log_h.exp().to(dtype)


# -- the shared residual stack ---------------------------------------------------------------


class MinimalRNNConfig(ModelConfig):
    """Keys the minimal RNN families share; each family's config fixes ``family``."""

    hidden: int = Field(128, ge=1, description="width of the residual stream and of the features")
    layers: int = Field(2, ge=1, description="stacked recurrent layers")
    expansion: float = Field(1.0, gt=0, description="recurrent state width as a multiple of hidden")
    residual: bool = Field(True, description="pre-norm residual blocks (x + rnn(norm(x))); False: plain stacking")
    norm: Literal["layer", "rms", "none"] = Field("layer", description="normalization before each sublayer")
    mlp_ratio: float = Field(0.0, ge=0, description="feed-forward sublayer after each recurrent one, "
                                                    "as a multiple of hidden; 0: none")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on each sublayer's output")
    pooling: Literal["last", "mean"] = Field("last", description="how the positions become one feature vector")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "rms":
        return nn.RMSNorm(width)
    return nn.Identity()


class Block(nn.Module):
    """``x + drop(cell(norm(x)))``, then optionally ``x + drop(mlp(norm(x)))``; the same per step."""

    def __init__(self, cell: nn.Module, config: MinimalRNNConfig):
        super().__init__()
        width = config.hidden
        self.residual = config.residual
        self.norm = _norm(config.norm, width)
        self.cell = cell
        self.drop = nn.Dropout(config.dropout)
        self.mlp = None
        if config.mlp_ratio:
            inner = max(1, round(width * config.mlp_ratio))
            self.mlp_norm = _norm(config.norm, width)
            self.mlp = nn.Sequential(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width))

    def _add(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return x + self.drop(update) if self.residual else self.drop(update)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else self._add(x, self.mlp(self.mlp_norm(x)))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, last = self.cell(self.norm(x), h0)  # (B, T, width), (B, state)
        return self._feed_forward(self._add(x, out)), last

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.cell.step(self.norm(x), h)  # (B, width), (B, state)
        return self._feed_forward(self._add(x, out)), h


class MinimalRNN(LayerwiseModel):
    """Base of the minimal RNN families: an input map, blocks around ``cell_class``, pooling, a head.

    Parallel over time for training (:meth:`forward_sequence`), recurrent with a state of
    ``layers x (batch, state width)`` numbers for generation (:meth:`init_state`, :meth:`step`).
    """

    accepts = frozenset({"sequence", "tokens"})
    cell_class: ClassVar[type[nn.Module]]

    def __init__(self, config: MinimalRNNConfig, spec):
        super().__init__(config, spec)
        width = config.hidden
        self.state_width = max(1, round(width * config.expansion))
        self.inputs = SequenceInput(spec, width)
        self.blocks = nn.ModuleList(Block(self.cell_class(width, self.state_width), config)
                                    for _ in range(config.layers))
        self.final_norm = _norm(config.norm, width) if config.residual else nn.Identity()
        self.head = nn.Linear(width, spec.num_outputs)

    def forward_sequence(self, x: torch.Tensor, state: list[torch.Tensor] | None = None,
                         return_state: bool = False):
        """Hidden vectors at every position, (B, T, hidden), computed in parallel over time.

        ``state`` (from :meth:`init_state` or an earlier call) continues a sequence; with
        ``return_state=True`` the result is ``(hidden, state)``, e.g. to prefill a prompt, then :meth:`step`.
        """
        h = self.inputs(x)  # (B, T, hidden)
        last = []
        for i, block in enumerate(self.blocks):
            h, h_last = block(h, None if state is None else state[i])
            last.append(h_last)
        h = self.final_norm(h)
        return (h, last) if return_state else h

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return pool_sequence(self.forward_sequence(x), self.config.pooling)  # (B, hidden)

    def init_state(self, batch_size: int) -> list[torch.Tensor]:
        """The state before the first step: zeros, one (batch, state width) tensor per layer."""
        ref = self.head.weight
        return [torch.zeros(batch_size, self.state_width, device=ref.device, dtype=ref.dtype) for _ in self.blocks]

    def step(self, x_t: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One time step: ``x_t`` is (B, F) features or (B,) token ids; returns ((B, hidden), new state)."""
        h = self.inputs(x_t)  # (B, hidden)
        new_state = []
        for block, s in zip(self.blocks, state):
            h, s = block.step(h, s)
            new_state.append(s)
        return self.final_norm(h), new_state

