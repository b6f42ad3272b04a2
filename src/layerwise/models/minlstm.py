"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

An LSTM whose gates see only the input, with no output gate or cell/hidden split:
``f_t = sigmoid(W_f x_t)``, ``i_t = sigmoid(W_i x_t)``, ``h~_t = g(W_h x_t)``, normalized to
``f'_t = f_t / (f_t + i_t)`` and ``i'_t = i_t / (f_t + i_t)`` so the state's scale does not depend
on time, and ``h_t = f'_t * h_{t-1} + i'_t * h~_t``. Training computes all positions at once with
the log-space parallel scan (``_scan.parallel_scan_log``); generation steps the recurrence.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import register_family
from ._scan import MinimalRNN, MinimalRNNConfig, g, log_g, parallel_scan_log


class MinLSTMConfig(MinimalRNNConfig):
    family: Literal["minlstm"] = "minlstm"


class MinLSTMCell(nn.Module):
    """One minLSTM layer: ``width`` in, a state of ``state_width``, ``width`` out."""

    def __init__(self, width: int, state_width: int):
        super().__init__()
        self.gates = nn.Linear(width, 3 * state_width)  # f_t, i_t and h~_t pre-activations, from x_t only
        self.out = nn.Linear(state_width, width) if state_width != width else nn.Identity()

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All positions in parallel: x (B, T, width) → ((B, T, width), last state (B, state_width))."""
        kf, ki, pre = self.gates(x).chunk(3, dim=-1)  # (B, T, state) each
        # log(i/f) = log sigmoid(ki) - log sigmoid(kf); then log f' = -softplus(d), log i' = -softplus(-d)
        d = F.softplus(-kf) - F.softplus(-ki)
        h = parallel_scan_log(-F.softplus(d), -F.softplus(-d) + log_g(pre), h0)  # (B, T, state)
        return self.out(h), h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x (B, width), h (B, state_width) → ((B, width), new h)."""
        kf, ki, pre = self.gates(x).chunk(3, dim=-1)
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)
        h = (f * h + i * g(pre)) / (f + i)
        return self.out(h), h


@register_family("minlstm")
class MinLSTM(MinimalRNN):
    """minLSTM: normalized input-only forget and input gates, trained in parallel over time."""

    Config = MinLSTMConfig
    cell_class = MinLSTMCell
