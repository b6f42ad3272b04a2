"""Loading the model of a compressed run (`layerwise compress`): dynamic int8 weights rebuilt into
quantized modules, a static or QAT int8 graph re-converted from its saved state, or a pruned model
rebuilt with its pruned shapes. The compressing itself is the ``compress`` tool; reading the result
belongs to every run, so it lives here.

Everything here reads safetensors and JSON only. The one exception is a graph-mode int8 run written
by an older layerwise (``format: exported-program``): it holds nothing but an ExportedProgram, which
unpickles, so it loads only when the run is trusted (``docs/security.md``).
"""

from __future__ import annotations

import json

from ..core.errors import RunError
from ..models import build_model
from ..ops import prune as pruning
from ..ops import quantize as quant
from .trust import OPT_IN, inside, trusted

__all__ = ["COMPRESSION_FILE", "FORMATS", "load_compressed_model"]

COMPRESSION_FILE = "compression.json"  # written by the compress tool into the new run

# compression.json's "format": what its model_file holds
FORMATS = {
    "dynamic-int8": "int8 weights with scales and zero points (safetensors)",
    "pt2e-int8": "an ExportedProgram to deploy; the run loads state_file, the prepared graph's state (safetensors)",
    "dense": "float weights with zeros (safetensors)",
    "pruned": "float weights in the pruned shapes of compression.json (safetensors)",
    "exported-program": "an ExportedProgram only (older runs): loaded with torch.export.load, when trusted",
}


def _file(run, info: dict, key: str):
    """The run's file named by compression.json's ``key``: inside the run directory, and present."""
    name = info.get(key)
    if not isinstance(name, str) or not name:
        raise RunError(f"{run.path / COMPRESSION_FILE}: '{key}' is missing; compress the original run again")
    path = inside(run.path, name, f"{COMPRESSION_FILE}: {key}")
    if not path.is_file():
        raise RunError(f"{run.path}: {name} is missing; compress the original run again")
    return path


def load_compressed_model(run):
    """Rebuild a compressed run's model from its architecture, compression.json and saved weights."""
    from safetensors.torch import load_file

    info = json.loads((run.path / COMPRESSION_FILE).read_text())
    fmt = info.get("format")
    if fmt not in FORMATS:
        raise RunError(f"{run.path / COMPRESSION_FILE}: unknown format {fmt!r}; this layerwise reads "
                       f"{', '.join(FORMATS)}")
    path = _file(run, info, "model_file")
    if fmt == "exported-program":
        if not trusted(run.trust_code):
            raise RunError(f"{path}: a pickled ExportedProgram (torch.export.load can run code from it); {OPT_IN}, "
                           f"or compress the original run again with this layerwise (which saves safetensors)")
        return quant.load_program(path, run.config.model, run.spec)
    net = build_model(run.config.model, run.spec)
    if fmt == "pt2e-int8":
        mode = (info.get("options") or {}).get("quantize")
        if mode not in ("static", "qat"):
            raise RunError(f"{run.path / COMPRESSION_FILE}: options.quantize is {mode!r}; expected static or qat")
        return quant.load_pt2e(net, load_file(_file(run, info, "state_file")), mode)
    tensors = load_file(path)
    if fmt == "dynamic-int8":
        return quant.load_dynamic(net, tensors, run.config.model.family)
    if fmt == "pruned":
        pruning.apply_shapes(net, info["pruned_shapes"])
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RunError(f"{path}: the weights do not fit the rebuilt {run.config.model.family} model "
                       f"({str(exc).splitlines()[0]})") from None
    return net.eval()
