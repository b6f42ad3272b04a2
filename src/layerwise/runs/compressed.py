"""Loading the model of a compressed run (`layerwise compress`): dynamic int8 weights rebuilt into
quantized modules, a static int8 ExportedProgram lowered to int8 kernels, or a pruned model rebuilt
with its pruned shapes. The compressing itself is the ``compress`` tool; reading the result belongs
to every run, so it lives here."""

from __future__ import annotations

import json

from ..core.errors import RunError
from ..models import build_model
from ..ops import prune as pruning
from ..ops import quantize as quant

__all__ = ["COMPRESSION_FILE", "load_compressed_model"]

COMPRESSION_FILE = "compression.json"  # written by the compress tool into the new run


def load_compressed_model(run):
    """Rebuild a compressed run's model from its architecture, compression.json and saved weights."""
    from safetensors.torch import load_file

    info = json.loads((run.path / COMPRESSION_FILE).read_text())
    path = run.path / info["model_file"]
    if not path.is_file():
        raise RunError(f"{run.path}: {info['model_file']} is missing; compress the original run again")
    if info["format"] == "exported-program":
        return quant.load_program(path, run.config.model, run.spec)
    net = build_model(run.config.model, run.spec)
    tensors = load_file(path)
    if info["format"] == "dynamic-int8":
        return quant.load_dynamic(net, tensors, run.config.model.family)
    if info["format"] == "pruned":
        pruning.apply_shapes(net, info["pruned_shapes"])
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RunError(f"{path}: the weights do not fit the rebuilt {run.config.model.family} model "
                       f"({str(exc).splitlines()[0]})") from None
    return net.eval()
