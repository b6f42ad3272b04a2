"""Transfer learning: start a model from another run's weights, and freeze the layers you keep.

Features learnt on one data set are a better start than random ones for a related task, most of all
with few labels (Yosinski et al. 2014, "How transferable are features in deep neural networks?").
``model.init_from`` names a run directory (its ``model.safetensors``) or a safetensors file written
by layerwise: every tensor whose name and shape fit this model is loaded; the output layer
(``head.*``) is left freshly initialised when its shape differs (another number of classes), and
any other layer that does not fit is a one-line error naming it, rather than a silent partial load.

``train.freeze`` lists glob patterns over parameter names (``features.*``, ``inputs.*``): matching
parameters keep their loaded values (``requires_grad`` off; the optimizer skips them), and frozen
batch-norm layers keep their statistics (inference mode, :func:`hold_frozen_norms`). A pattern
that matches nothing is refused with the model's top-level modules, so a typo never trains
everything silently.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from ..core.errors import ConfigError, ModelError

__all__ = ["load_initial_weights", "freeze", "parameters_matching", "layer_groups", "hold_frozen_norms"]

HEAD = "head."  # the contract's output layer (LayerwiseModel.head): re-initialised when it does not fit
PRETEXT = "pretext."  # a self-supervised run's projection head or decoder (Task.extend_model): not carried over
ADAPTER = "lora_"  # LoRA's adapter parameters (models/lora.py), which a source without them leaves as built


def _weights_file(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        if (path / "compression.json").is_file():
            raise ModelError(f"model.init_from: {path} is a compressed run (int8 or pruned weights); start from the "
                             f"run it was compressed from")
        path = path / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"model.init_from: {source}: no run directory with a model.safetensors, nor a .safetensors "
                         f"file, is there; give the path of a trained run")
    return path


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def load_initial_weights(model: torch.nn.Module, source: str | Path) -> list[str]:
    """Load the tensors of ``source`` that fit ``model`` (in place); returns lines saying what was kept
    fresh (the head, when the outputs differ). Raises a one-line :class:`ModelError` for anything else."""
    from safetensors import safe_open

    path = _weights_file(source)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelError(f"model.init_from: {path} is not a readable safetensors file "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    family, wanted = metadata.get("family"), getattr(getattr(model, "config", None), "family", None)
    if family and wanted and family != wanted:
        raise ModelError(f"model.init_from: {source} holds a '{family}' model and this config builds '{wanted}'; "
                         f"set model.family: {family} with the sizes of that run (`layerwise models show`)")
    if any(name.startswith("bag.") for name in tensors):  # models/bagging.py: K members side by side
        raise ModelError(f"model.init_from: {source} is a bag of members (model.bags); a start is one network's "
                         f"weights: train the source run with model.bags: 1")
    tensors = {name: t for name, t in _adapters_merged(tensors, metadata).items() if not name.startswith(PRETEXT)}
    own = model.state_dict()
    state, fresh, misfits = {}, [], []
    for name, tensor in own.items():
        theirs = tensors.get(name)
        if theirs is not None and theirs.shape == tensor.shape:
            state[name] = theirs.to(tensor.dtype)
        elif name.rsplit(".", 1)[-1].startswith(ADAPTER) and theirs is None:
            continue  # this model's LoRA adapters start as built (B = 0: the loaded model, unchanged)
        elif name.startswith(HEAD):
            fresh.append(name)  # another label set, or no head in the file: this layer starts from scratch
        else:
            misfits.append(f"{name} ({'absent' if theirs is None else _shape(theirs)} there, {_shape(tensor)} here)")
    misfits += [f"{name} (not in this model)" for name in tensors if name not in own and not name.startswith(HEAD)]
    if misfits:
        shown = "; ".join(misfits[:3]) + (f"; and {len(misfits) - 3} more" if len(misfits) > 3 else "")
        raise ModelError(f"model.init_from: {len(misfits)} layers of {source} do not fit this model: {shown}; "
                         f"build the same architecture as that run (only the head may differ)")
    model.load_state_dict({**own, **state})
    return [f"head re-initialised ({', '.join(fresh)}): its shape differs from {source}'s"] if fresh else []


def _adapters_merged(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """A LoRA run's weights with its adapters folded in (what it predicts with), else as they are."""
    import json

    from ..core.config import LoRAConfig
    from .lora import ADAPTER, merged_weights

    if not any(name.rsplit(".", 1)[-1].startswith(ADAPTER) for name in tensors):
        return tensors
    lora = json.loads(metadata.get("model_config", "{}")).get("lora") or {}
    return merged_weights(tensors, LoRAConfig(**lora))


def parameters_matching(model: torch.nn.Module, patterns, key: str) -> dict[str, list[str]]:
    """The parameter names each glob pattern matches, in the patterns' order. A pattern matching none
    is a one-line :class:`ConfigError` naming ``key`` and the model's top-level modules (a typo must
    not silently apply to nothing)."""
    names = [name for name, _ in model.named_parameters()]
    matched = {}
    for pattern in patterns:
        matched[pattern] = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched[pattern]:
            modules = sorted({name.split(".", 1)[0] for name in names})
            raise ConfigError(f"{key}: '{pattern}' matches no parameter of this model; its modules are "
                              f"{', '.join(modules)} (e.g. '{modules[0]}.*')")
    return matched


def freeze(model: torch.nn.Module, patterns: list[str]) -> int:
    """Turn ``requires_grad`` off for parameters whose name matches a glob pattern; returns how many."""
    matched = {name for names in parameters_matching(model, patterns, "train.freeze").values() for name in names}
    frozen = 0
    for name, parameter in model.named_parameters():
        if name in matched and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += 1
    if frozen and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"train.freeze: {', '.join(patterns)} freezes every parameter; leave at least the head "
                          f"trainable (e.g. freeze 'body.*' only, not 'head.*')")
    return frozen


def hold_frozen_norms(model: torch.nn.Module) -> int:
    """Batch-norm layers whose scale and shift are frozen run in inference mode: they normalise with
    the statistics they were loaded with and do not update them (Keras's rule for a non-trainable
    BatchNormalization). A frozen layer whose statistics drifted to the new data would no longer be
    the layer that was loaded. A task's pretext modules are left alone (BYOL's target network
    normalises with its batch). Call after ``model.train()``; returns how many layers it held."""
    held = 0
    for name, module in model.named_modules():
        if name.startswith(PRETEXT[:-1]) or not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        weights = [p for p in module.parameters(recurse=False)]
        if weights and not any(p.requires_grad for p in weights):
            module.eval()
            held += 1
    return held


def layer_groups(model: torch.nn.Module) -> list[list[str]]:
    """The model's parameter names grouped into layers, from the input to the output: by their first
    two name parts (``body.3``, ``inputs.periodic``), the output layer (``head.*``) last whatever its
    place. What gradual unfreezing releases one at a time, from the top."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        key = parts[0] if parts[0] == "head" or len(parts) <= 2 else ".".join(parts[:2])
        groups.setdefault(key, []).append(name)
    head = groups.pop("head", [])
    return list(groups.values()) + ([head] if head else [])
