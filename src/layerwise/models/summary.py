"""A layer-by-layer summary of a built model: output shapes and parameter counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerRow", "summarize"]


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...] | str
    parameters: int


def summarize(model: nn.Module, example: torch.Tensor) -> list[LayerRow]:
    """Run ``example`` (a batch) through ``model`` and record every leaf module's output shape."""
    rows: list[LayerRow] = []
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, shape, params))
        return record

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows
