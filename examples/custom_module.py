"""Bring your own ``nn.Module``: a plain PyTorch model, trained by layerwise's loop.

Used by examples/custom_module.yaml (``family: python``) and examples/python_api.py.
Constructor parameters named ``input_shape``, ``num_outputs``, ``num_classes`` or ``spec`` are
filled in from the data by layerwise unless ``model.args`` sets them; the rest come from
``model.args``. ``forward`` must map a batch of inputs to (batch, num_outputs) logits or values.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv → pool → MLP for small images of shape ``input_shape`` = (channels, height, width)."""

    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # (B, 32, 4, 4) whatever the input size
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, num_outputs)
