"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

A GRU whose gates see only the input: ``z_t = sigmoid(W_z x_t)``, ``h~_t = g(W_h x_t)`` and
``h_t = (1 - z_t) * h_{t-1} + z_t * h~_t``. With no ``h_{t-1}`` inside the gates the recurrence is
linear in ``h``, so training computes all positions at once with the log-space parallel scan
(``_scan.parallel_scan_log``), and generation steps it with a state of one vector per layer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import register_family
from ._scan import MinimalRNN, MinimalRNNConfig, g, log_g, parallel_scan_log


class MinGRUConfig(MinimalRNNConfig):
    family: Literal["mingru"] = "mingru"


class MinGRUCell(nn.Module):
    """One minGRU layer: ``width`` in, a state of ``state_width``, ``width`` out."""

    def __init__(self, width: int, state_width: int):
        super().__init__()
        self.gates = nn.Linear(width, 2 * state_width)  # z_t and h~_t pre-activations, from x_t only
        self.out = nn.Linear(state_width, width) if state_width != width else nn.Identity()

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All positions in parallel: x (B, T, width) → ((B, T, width), last state (B, state_width))."""
        k, pre = self.gates(x).chunk(2, dim=-1)  # (B, T, state) each
        log_keep = -F.softplus(k)  # log(1 - z_t)
        log_z = -F.softplus(-k)  # log z_t
        h = parallel_scan_log(log_keep, log_z + log_g(pre), h0)  # (B, T, state)
        return self.out(h), h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x (B, width), h (B, state_width) → ((B, width), new h)."""
        k, pre = self.gates(x).chunk(2, dim=-1)
        z = torch.sigmoid(k)
        h = (1 - z) * h + z * g(pre)
        return self.out(h), h


@register_family("mingru")
class MinGRU(MinimalRNN):
    """minGRU: gates from the input only, trained in parallel over time with a log-space scan."""

    Config = MinGRUConfig
    cell_class = MinGRUCell
