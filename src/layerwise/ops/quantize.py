"""Int8 quantization of a trained model (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference").

Three modes:

- ``dynamic``: weights of Linear and LSTM/GRU layers stored as int8, activations quantized on the
  fly per batch (``torch.ao.quantization.quantize_dynamic``; fbgemm/x86 int8 kernels on the CPU).
  The output head of a model with a step-by-step interface stays float.
- ``static``: weights *and* activations in int8, activation ranges calibrated on training batches,
  through PyTorch 2 export quantization (PT2E). In torch 2.13 PT2E lives in torchao
  (``torchao.quantization.pt2e``; ``torch.ao.quantization.quantize_pt2e`` is gone). The converted
  graph of quantize/dequantize ops is lowered to oneDNN's int8 convolution and linear kernels
  (``onednn.qconv_pointwise``, ``onednn.qlinear_pointwise``).
- ``qat``: the same graph with fake quantization inserted before fine-tuning, so the weights adapt
  to int8 rounding (quantization-aware training), then converted like ``static``.

Nothing is loaded back from a pickle. Dynamic-quantized weights are saved in safetensors as int8
values plus scales and zero points and put back into a freshly quantized copy of the float
architecture. A static or QAT model is saved as the state of its prepared graph just before
conversion (the float or fine-tuned weights and every observer's calibrated statistics, in
safetensors): loading captures the float architecture again, prepares it the same way, puts that
state back and converts, which gives the same int8 graph bit for bit (``load_pt2e``). The converted
graph is also written as an ExportedProgram (``save_program``), the file to deploy; reading one
back (``load_program``) unpickles, so a run loads it only when its user trusts it.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..core.errors import RunError, require
from ..models import LayerwiseModel
from ..models.abilities import Stepper, has_ability

__all__ = [
    "Int8Graph",
    "QuantizedProgram",
    "check_static",
    "dynamic_tensors",
    "load_dynamic",
    "load_program",
    "load_pt2e",
    "quantize_dynamic",
    "quantize_qat",
    "quantize_static",
    "save_program",
]

DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)  # what quantize_dynamic has int8 kernels for


def _dynamic_targets(model: nn.Module) -> list[str]:
    """Names of the layers to quantize. Exact types: subclasses such as MultiheadAttention's
    NonDynamicallyQuantizableLinear are not converted. The output head of a model with a
    step-by-step interface stays float: its ``init_state`` reads ``head.weight`` for the dtype."""
    keep_head = has_ability(model, Stepper)
    return [name for name, m in model.named_modules()
            if type(m) in DYNAMIC_TYPES and not (keep_head and name == "head")]


def quantize_dynamic(model: nn.Module, family: str) -> nn.Module:
    """A copy of ``model`` with its Linear/LSTM/GRU layers in dynamic int8."""
    targets = _dynamic_targets(model)
    if not targets:
        besides = " besides its output head (kept float for step-by-step use)" if has_ability(model, Stepper) else ""
        raise RunError(f"--quantize dynamic: the {family} model has no Linear, LSTM or GRU layer to quantize{besides}")
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization warns on every call that it moves to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(),
                                                      dict.fromkeys(targets, qconfig), dtype=torch.qint8)


def _is_dynamic(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def _pack(key: str, q: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    """A quantized tensor as plain tensors: int8 values, scale(s), zero point(s) and the channel axis."""
    out[key] = q.int_repr()
    if q.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        out[key + ".__scale"] = torch.tensor([q.q_scale()], dtype=torch.float64)
        out[key + ".__zero_point"] = torch.tensor([q.q_zero_point()], dtype=torch.int64)
    else:
        out[key + ".__scale"] = q.q_per_channel_scales()
        out[key + ".__zero_point"] = q.q_per_channel_zero_points()
        out[key + ".__axis"] = torch.tensor([q.q_per_channel_axis()], dtype=torch.int64)


def _unpack(key: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    ints, scale, zero = tensors[key], tensors[key + ".__scale"], tensors[key + ".__zero_point"]
    if key + ".__axis" in tensors:
        return torch._make_per_channel_quantized_tensor(ints, scale, zero, int(tensors[key + ".__axis"]))
    return torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero))


def _walk(model: nn.Module):
    """(name, module, is_dynamic) for every module not inside a dynamic-quantized one."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        dynamic = _is_dynamic(module)
        if dynamic:
            inside.append(name)
        yield name, module, dynamic


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def dynamic_tensors(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a dynamic-quantized model, quantized weights packed as int8 + scales."""
    out: dict[str, torch.Tensor] = {}
    for name, module, dynamic in _walk(qmodel):
        if dynamic and isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            _pack(_key(name, "weight"), weight, out)
            if bias is not None:
                out[_key(name, "bias")] = bias.detach()
        elif dynamic:  # LSTM / GRU: weight_ih_l0, weight_hh_l0, bias_ih_l0, ...
            for k, w in module.get_weight().items():
                _pack(_key(name, k), w, out)
            for k, b in module.get_bias().items():
                out[_key(name, k)] = b.detach()
        else:
            for k, p in module._parameters.items():
                if p is not None:
                    out[_key(name, k)] = p.detach()
            for k, b in module._buffers.items():
                if b is not None and k not in module._non_persistent_buffers_set:
                    out[_key(name, k)] = b.detach()
    return _savable(out)


def _savable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors accepts: on the CPU, contiguous, none sharing storage with another
    (tied weights, a head reusing the embedding, are cloned)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr() if v.numel() else -id(v)
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return {k: v.cpu().contiguous() for k, v in out.items()}


def load_dynamic(model: nn.Module, tensors: dict[str, torch.Tensor], family: str) -> nn.Module:
    """Quantize the rebuilt float ``model`` the same way, then put the saved int8 weights in place."""
    qmodel = quantize_dynamic(model, family)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in tensors:
            raise RunError(f"model.safetensors: '{key}' is missing; the int8 weights do not fit the {family} model")
        used.update(k for k in tensors if k == key or k.startswith(key + ".__"))
        return _unpack(key, tensors) if key + ".__scale" in tensors else tensors[key]

    with torch.no_grad():
        for name, module, dynamic in _walk(qmodel):
            if dynamic and isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                has_bias = module._weight_bias()[1] is not None
                module.set_weight_bias(take(_key(name, "weight")), take(_key(name, "bias")) if has_bias else None)
            elif dynamic:
                keys = list(module.get_weight()) + list(module.get_bias())
                module.set_weight_bias({k: take(_key(name, k)) for k in keys})
            else:
                for k, p in module._parameters.items():
                    if p is not None:
                        p.copy_(take(_key(name, k)))
                for k, b in module._buffers.items():
                    if b is not None and k not in module._non_persistent_buffers_set:
                        b.copy_(take(_key(name, k)))
    extra = sorted(set(tensors) - used)
    if extra:
        raise RunError(f"model.safetensors: unexpected tensor '{extra[0]}' for the quantized {family} model")
    return qmodel.eval()


# -- PT2E: static post-training quantization and quantization-aware training --------------------


def check_static(model: LayerwiseModel, mode: str) -> None:
    """Refuse models whose state is carried across time steps: one calibrated activation range per
    tensor does not describe a recurrent or scanned state, and the x86 quantizer annotates only
    convolutions and linear layers of a feed-forward graph. QAT also refuses ensembles, whose
    training-mode outputs (one per member) differ in shape from their predictions."""
    if has_ability(model, Stepper):
        raise RunError(f"--quantize {mode}: the {model.config.family} family is a sequence model and static int8 "
                       f"(PT2E, x86) covers feed-forward conv/linear graphs only; use --quantize dynamic")
    if mode == "qat" and getattr(model, "members", 1) > 1:  # the ensemble contract of layerwise.models
        raise RunError(f"--quantize qat: the {model.config.family} model is an ensemble of {model.members} members "
                       f"whose training forward returns every member's outputs, a form the graph captured for QAT "
                       f"would keep after conversion; use --quantize static or dynamic")


def _batch_dim():
    return torch.export.Dim("batch", min=1)


def _export(model: nn.Module, example: torch.Tensor, mode: str, family: str):
    try:
        # strict (dynamo) capture tells apart two calls of one shared module (ResNet's single ReLU used
        # twice), which the x86 quantizer's pattern partitions rely on
        return torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},), strict=True)
    except Exception as exc:  # noqa: BLE001 - any capture failure of a family or user forward
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"--quantize {mode}: torch.export cannot capture the {family} model ({first}); "
                       f"use --quantize dynamic") from None


def _import_torchao() -> None:
    """Import torchao's PT2E quietly: on a CPU-only torch its CUDA kernels fail to load (expected,
    unused here) and it registers an enum torch calls deprecated; neither concerns int8 on the CPU."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        require("torchao", "compress")
        import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _quantizer(is_qat: bool):
    _import_torchao()
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def _annotated(prepare: Callable, graph: nn.Module, quantizer, mode: str, family: str) -> nn.Module:
    try:
        return prepare(graph, quantizer)
    except Exception as exc:  # noqa: BLE001 - the quantizer's pattern matching fails on graphs it does not know
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"--quantize {mode}: the x86 quantizer cannot annotate the {family} graph ({first}); "
                       f"use --quantize dynamic") from None


Mode = Literal["static", "qat"]


@dataclass
class Int8Graph:
    """A PT2E int8 model and what rebuilds it without a pickle (see :func:`load_pt2e`)."""

    converted: nn.Module  # quantize/dequantize ops around int8 weights: what save_program writes
    state: dict[str, torch.Tensor]  # the prepared graph's state just before conversion (plain tensors)
    mode: Mode


def _prepared(model: LayerwiseModel, example: torch.Tensor, mode: Mode) -> nn.Module:
    """The float model captured and annotated for int8: observers (static) or fake quantizers (qat)
    after every quantized conv/linear. The same model gives the same graph, module names included,
    which is what lets :func:`load_pt2e` put a saved state back."""
    check_static(model, mode)
    quantizer = _quantizer(is_qat=mode == "qat")
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    family = model.config.family
    if mode == "static":
        graph = _export(copy.deepcopy(model).cpu().eval(), example, mode, family).module()
        return _annotated(prepare_pt2e, graph, quantizer, mode, family)
    graph = _export(copy.deepcopy(model).cpu().train(), example, mode, family).module()
    prepared = _annotated(prepare_qat_pt2e, graph, quantizer, mode, family)
    allow_exported_model_train_eval(prepared)  # the Trainer and the evaluator switch train/eval
    return prepared


def _to_eval(prepared: nn.Module, mode: Mode) -> nn.Module:
    """QAT graphs are captured in training form: swap dropout and batch norm to their eval form."""
    if mode == "qat":
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(prepared)
    return prepared


def _converted(prepared: nn.Module, mode: Mode) -> Int8Graph:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = _to_eval(prepared, mode)
    state = _savable({k: v.clone() for k, v in prepared.state_dict().items()})  # convert_pt2e edits in place
    return Int8Graph(convert_pt2e(prepared), state, mode)


def quantize_static(model: LayerwiseModel, calibration: Iterable[torch.Tensor], example: torch.Tensor) -> Int8Graph:
    """PT2E post-training int8: capture, insert observers, calibrate, convert to quantize/dequantize ops."""
    prepared = _prepared(model, example, "static")
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return _converted(prepared, "static")


def quantize_qat(model: LayerwiseModel, example: torch.Tensor, finetune: Callable[[nn.Module], None]) -> Int8Graph:
    """PT2E quantization-aware training: fake-quantize, fine-tune with ``finetune(graph)``, convert."""
    prepared = _prepared(model, example, "qat")
    finetune(prepared)
    return _converted(prepared, "qat")


def _drop_unused_tensors(graph: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the graph no longer reads: after conversion the float weights
    stay attached beside their folded int8 copies, and export would save both."""
    used = {str(node.target) for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, leaf)


def save_program(converted: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The converted quantize/dequantize graph as an ExportedProgram (int8 weights, dynamic batch)."""
    from ..core.io import atomic_write

    _drop_unused_tensors(converted)
    program = torch.export.export(converted, (example,), dynamic_shapes=({0: _batch_dim()},))
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, the atomic temporary has none
    torch.export.save(program, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def _lower_x86(graph: nn.Module, example: torch.Tensor) -> nn.Module:
    """Fuse quantize/dequantize patterns into oneDNN int8 kernels; as torchao's
    ``lower_pt2e_quantized_to_x86`` but keeping the batch dimension dynamic (it exports statically)."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    decompositions = torch.export.default_decompositions()
    for op in list(decompositions):
        if not torch._export.utils._is_cia_op(op):  # post-autograd: keep primitive ops whole
            del decompositions[op]
    exported = torch.export.export(graph, (example,), dynamic_shapes=({0: _batch_dim()},), strict=True)
    lowered = exported.run_decompositions(decompositions).module()
    g = lowered.graph
    for node in list(g.nodes):
        if node.target == torch.ops.aten.view.default:
            # oneDNN's int8 convolutions may return channels-last tensors that a captured view
            # (flatten before the head) cannot reinterpret; reshape copies only when it must
            node.target = torch.ops.aten.reshape.default
        if node.target == torch.ops.aten.t.default:  # the fusion patterns expect permute, not aten.t
            with g.inserting_before(node):
                permute = g.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(permute)
            g.erase_node(node)
    g.lint()
    lowered.recompile()
    freezing_passes(lowered, (example,))
    constant_fold(lowered)
    return lowered


class QuantizedProgram(LayerwiseModel):
    """A graph-mode int8 model behind the contract's ``forward``; it has no separate features."""

    def __init__(self, graph: nn.Module, config, spec):
        super().__init__(config, spec)
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise RunError("a graph-mode int8 model has no separate features; use the original run for this")

    def train(self, mode: bool = True):
        self.training = mode  # the graph is frozen in inference form; nothing to switch
        return self


def _program(graph: nn.Module, config, spec) -> QuantizedProgram:
    """A converted int8 graph lowered to the CPU's int8 kernels, behind the model contract."""
    example = spec.example_input(2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices from inside the inductor passes
        lowered = _lower_x86(graph, example)
    return QuantizedProgram(lowered, config, spec).eval()


def load_pt2e(model: LayerwiseModel, tensors: dict[str, torch.Tensor], mode: Mode) -> QuantizedProgram:
    """Rebuild a static or QAT int8 model from its saved state: ``model`` is the float architecture
    freshly built from the run's config (its weights are replaced by the saved ones); it is captured
    and prepared as when it was quantized, the state is put back and the graph converted and lowered.
    Only tensors are read, so this is safe on a run directory of unknown origin."""
    prepared = _to_eval(_prepared(model, model.spec.example_input(2), mode), mode)
    try:
        prepared.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise RunError(f"the saved int8 state does not fit the {model.config.family} model as {mode} quantization "
                       f"prepares it ({str(exc).splitlines()[0]}); compress the original run again") from None
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return _program(convert_pt2e(prepared), model.config, model.spec)


def load_program(path: Path, config, spec) -> QuantizedProgram:
    """Load a saved int8 ExportedProgram and lower it to the CPU's int8 kernels.

    ``torch.export.load`` unpickles parts of the file, which can run code: call this only on a file
    you trust (a run loads one only with ``trust_code=True``, the CLI's ``--trust-run``)."""
    _import_torchao()
    return _program(torch.export.load(str(path)).module(), config, spec)
