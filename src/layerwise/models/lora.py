"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): fine-tune a few
low-rank matrices beside frozen linear layers.

A loaded linear layer ``W`` (out × in) stays as it is; beside it two small matrices, ``A`` (r × in)
and ``B`` (out × r), learn the change: ``y = W x + b + (alpha / r) · B A x``. ``B`` starts at zero,
so the adapted model starts exactly as the loaded one; ``A`` starts like a linear layer's weights.
With r = 8 a transformer block's adapters are ~2% of its weights: fine-tuning trains those and the
output layer only (``train``'s other parameters are frozen), and a run's checkpoint stays small in
what it changes.

``model.lora: {rank, alpha, targets, dropout}`` adapts every ``nn.Linear`` whose module name matches
one of ``targets`` (glob patterns; the defaults name the attention and MLP projections of the
transformer families: ``c_attn``, ``c_proj``, ``c_fc``); the head is never adapted (it trains
whole). An adapted layer *is* an ``nn.Linear`` with the same ``weight`` and ``bias``, so a run's
weights load into it by name (``model.init_from``), and its adapters are ``lora_A`` and ``lora_B``.

Merging (:func:`merge_lora`) folds ``(alpha / r) · B A`` into ``W`` and leaves plain linear layers: a
loaded run's model is merged for inference, so export (ONNX), serving, compression and explanations
see an ordinary model with the adapted outputs and no extra cost per prediction. The run's
``model.safetensors`` keeps the adapters apart, so a resume continues training them.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import LoRAConfig
from ..core.errors import ConfigError

__all__ = ["LoRAConfig", "LoRALinear", "add_lora", "merge_lora", "merged_weights", "train_only_adapters", "ADAPTER"]

ADAPTER = "lora_"  # the adapters' parameter names: lora_A, lora_B


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose frozen ``weight`` and ``bias`` are those of ``base``, plus ``lora_A`` and
    ``lora_B``: ``y = x W^T + b + (alpha / r) · (x A^T) B^T``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same parameters: names and values unchanged
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weight
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scaling * F.linear(
            F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain linear layer computing what this one computes in eval mode."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, config: LoRAConfig) -> int:
    """Adapt every ``nn.Linear`` of ``model`` whose name matches a target pattern (the head excepted);
    returns how many. A pattern that matches no linear layer is a one-line ConfigError."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
              and name != "head" and not name.startswith("head.")]
    chosen = []
    for pattern in config.targets:
        hits = [name for name in linear if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            shown = ", ".join(linear[:6]) + (", ..." if len(linear) > 6 else "") if linear else "none"
            raise ConfigError(f"model.lora.targets: '{pattern}' matches no linear layer of this model; its linear "
                              f"layers are {shown}")
        chosen += [name for name in hits if name not in chosen]
    for name in chosen:
        _replace(model, name, LoRALinear(model.get_submodule(name), config.rank, config.alpha, config.dropout))
    return len(chosen)


def train_only_adapters(model: nn.Module) -> tuple[int, int]:
    """Freeze every parameter but the adapters and the output layers; returns (trainable, total) counts."""
    outputs = model.output_layers() if hasattr(model, "output_layers") else [model.get_submodule("head")]
    heads = {id(p) for layer in outputs for p in layer.parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.rsplit(".", 1)[-1].startswith(ADAPTER) or id(parameter) in heads)
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def merged_weights(tensors: dict[str, torch.Tensor], config: LoRAConfig) -> dict[str, torch.Tensor]:
    """A saved state dict with every adapter folded into its layer's weight (what :func:`merge_lora`
    does to a model): the start ``model.init_from`` takes from a LoRA run."""
    out = {name: t for name, t in tensors.items() if not name.rsplit(".", 1)[-1].startswith(ADAPTER)}
    for name in tensors:
        if name.endswith("." + ADAPTER + "A"):
            prefix = name[: -len(ADAPTER + "A")]
            delta = tensors[prefix + ADAPTER + "B"].float() @ tensors[name].float()
            weight = tensors[prefix + "weight"]
            out[prefix + "weight"] = (weight.float() + config.alpha / config.rank * delta).to(weight.dtype)
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer, in place: the model computes the same, with plain
    ``nn.Linear`` layers and no ``lora_*`` parameters. Returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model
