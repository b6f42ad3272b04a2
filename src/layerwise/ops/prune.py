"""Pruning a trained model: global magnitude pruning (Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks") and structured channel pruning with dependency graphs
(Fang et al. 2023, "DepGraph: Towards Any Structural Pruning", the torch-pruning library).

- ``magnitude``: the weights of all Linear/Conv layers together that are smallest relative to their
  layer's standard deviation are set to zero (``torch.nn.utils.prune.global_unstructured`` with
  those scores). Han et al. prune each layer below quality x its std, which is the same as one global
  threshold on |w| / std; ranking raw |w| across layers instead empties whole layers whose weights are
  small by initialisation (a 300x100 layer vs a 784x300 one) and the network collapses to chance at
  90%. The shapes stay, so the file is as large as before until it is compressed, and dense kernels
  are no faster.
- ``structured``: whole output channels / neurons are removed together with every layer that
  depends on them, so parameters, file size and latency really drop. The output head is kept.

Both run in ``rounds`` steps towards the target, each followed by a ``finetune(model)`` call; for
magnitude pruning the masks stay in place while fine-tuning, so pruned weights stay zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ..core.errors import RunError, require
from ..models import LayerwiseModel
from ..models.abilities import Stepper, has_ability

__all__ = [
    "apply_shapes",
    "layer_sparsity",
    "magnitude_schedule",
    "prune_magnitude",
    "prune_structured",
    "pruned_shapes",
]

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SHAPE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "num_features", "normalized_shape",
               "embedding_dim")


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear/Conv layers with a weight of their own: a weight tied to another module (a language
    model's head reusing its embedding) is left whole, or pruning would untie it."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and owners.get(id(m.weight), 0) == 1]


def magnitude_schedule(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round, geometric: every round removes the same fraction of what is left
    (Zhu & Gupta 2017 use a similar cubic ramp), e.g. 0.9 in 2 rounds -> [0.684, 0.9]."""
    return [1 - (1 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each Linear/Conv layer."""
    return {name: float((m.weight == 0).float().mean()) for name, m in _targets(model)}


def global_sparsity(model: nn.Module) -> float:
    zeros = sum(int((m.weight == 0).sum()) for _, m in _targets(model))
    total = sum(m.weight.numel() for _, m in _targets(model))
    return zeros / max(total, 1)


def prune_magnitude(model: LayerwiseModel, sparsity: float, rounds: int,
                    finetune: Callable[[nn.Module], None] | None = None) -> LayerwiseModel:
    """Global unstructured pruning to ``sparsity`` of the Linear/Conv weights, ranked by |w| / layer std
    (Han et al.'s per-layer threshold), made permanent."""
    targets = [(m, "weight") for _, m in _targets(model)]
    if not targets:
        raise RunError(f"--prune magnitude: the {model.config.family} model has no Linear or Conv layer to prune")
    total = sum(m.weight.numel() for m, _ in targets)
    done = 0
    for target in magnitude_schedule(sparsity, rounds):
        # an integer amount counts weights among those still unpruned: exact global sparsity each round
        count = round(target * total) - done
        scores = {(m, name): m.weight.detach().abs() / m.weight.detach().std().clamp_min(1e-12) for m, name in targets}
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=count, importance_scores=scores)
        done += count
        if finetune is not None:
            finetune(model)  # weight = weight_orig * mask: pruned weights get no gradient and stay zero
    for module, name in targets:
        prune.remove(module, name)
    return model


def _check_structured(model: LayerwiseModel) -> None:
    """Channel pruning needs every coupled dimension visible to the dependency graph: recurrent
    state sizes and attention head splits are read from attributes it does not rewrite."""
    family = model.config.family
    if has_ability(model, Stepper):
        raise RunError(f"--prune structured: the {family} family is a sequence model whose recurrent or attention "
                       f"widths channel pruning cannot shrink consistently; use --prune magnitude")
    for name, module in model.named_modules():
        if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)) or type(module).__name__ == "SelfAttention":
            raise RunError(f"--prune structured: the {family} model has attention/recurrent layers ({name}) whose "
                           f"head splits channel pruning cannot follow; use --prune magnitude")


def prune_structured(model: LayerwiseModel, sparsity: float, rounds: int, example: torch.Tensor,
                     finetune: Callable[[nn.Module], None] | None = None) -> LayerwiseModel:
    """Remove the ``sparsity`` fraction of channels/neurons of every prunable layer but the head (L2
    magnitude of each dependency group), in ``rounds`` linear steps, fine-tuning after each."""
    _check_structured(model)
    tp = require("torch_pruning", "compress")
    model.eval()
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, iterative_steps=rounds, ignored_layers=model.output_layers())
    for _ in range(rounds):
        pruner.step()
        if finetune is not None:
            finetune(model)
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # noqa: BLE001 - a forward reading a width torch-pruning did not change
        raise RunError(f"--prune structured: the pruned {model.config.family} model no longer runs "
                       f"({type(exc).__name__}); use --prune magnitude") from None
    if out.shape[-1] != model.spec.num_outputs:
        raise RunError(f"--prune structured: pruning changed the {model.config.family} output width; "
                       f"use --prune magnitude")
    return model


def pruned_shapes(fresh: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """For each module whose tensors changed shape: the new tensor shapes and width attributes, so the
    architecture can be rebuilt from the config and these records (then the safetensors weights load)."""
    before = dict(fresh.named_modules())
    records: dict[str, dict[str, Any]] = {}
    for name, module in pruned.named_modules():
        old = before.get(name)
        shapes = {k: list(t.shape) for k, t in [*module._parameters.items(), *module._buffers.items()]
                  if t is not None and old is not None and getattr(old, k, None) is not None
                  and tuple(getattr(old, k).shape) != tuple(t.shape)}
        if shapes:
            attrs = {a: (list(v) if isinstance(v, tuple) else v) for a in SHAPE_ATTRS
                     if (v := getattr(module, a, None)) is not None and v != getattr(old, a, None)}
            records[name] = {"shapes": shapes, "attrs": attrs}
    return records


def apply_shapes(model: nn.Module, records: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize a freshly built model's tensors and width attributes to the recorded pruned shapes."""
    modules = dict(model.named_modules())
    for name, record in records.items():
        if name not in modules:
            raise RunError(f"compression.json: pruned layer '{name}' is not in the rebuilt model")
        module = modules[name]
        for attr, value in record["attrs"].items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for key, shape in record["shapes"].items():
            if key in module._parameters:
                old = module._parameters[key]
                module._parameters[key] = nn.Parameter(torch.empty(shape, dtype=old.dtype), old.requires_grad)
            else:
                module._buffers[key] = torch.empty(shape, dtype=module._buffers[key].dtype)
    return model
