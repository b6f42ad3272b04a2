"""Loading the model of a compressed run (`layerwise compress`): dynamic int8 weights rebuilt into
quantized modules, a static or QAT int8 graph re-converted from its saved state, or a pruned model
rebuilt with its pruned shapes. The compressing itself is the ``compress`` tool; reading the result
belongs to every run, so it lives here.

Everything here reads safetensors and JSON only. The one exception is a graph-mode int8 run written
by an older layerwise (``format: exported-program``): it holds nothing but an ExportedProgram, which
unpickles, so it loads only when the run is trusted (``docs/security.md``).
"""

from __future__ import annotations

from ..core.errors import RunError
from ..models import build_model
from ..models.lora import merge_lora
from ..ops import prune as pruning
from ..ops import quantize as quant
from ..train.checkpoint import state_mismatch
from .files import RECOMPRESS, read_json, read_weights, run_file_error
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


# the "format" in the metadata of the safetensors file each format loads from (older files have none)
WEIGHTS_FORMAT = {"dynamic-int8": "layerwise-int8-dynamic", "pt2e-int8": "layerwise-int8-pt2e", "dense": "layerwise",
                  "pruned": "layerwise"}
WEIGHTS_KIND = {"layerwise": "float", "layerwise-int8-dynamic": "dynamic int8", "layerwise-int8-pt2e": "static int8"}


def _weights(path, fmt: str) -> dict:
    """The tensors of the safetensors file ``path``, which compression.json says holds ``fmt`` weights."""
    # a static int8 state keeps its observers' ranges, +-inf in those no input reached
    tensors, metadata = read_weights(path, RECOMPRESS, allow_infinite=fmt == "pt2e-int8")
    written = metadata.get("format")
    if written is not None and written != WEIGHTS_FORMAT[fmt]:  # e.g. the original run's float weights copied in
        raise run_file_error(path, f"holds {WEIGHTS_KIND.get(written, written)} weights, not the {fmt} weights "
                             f"{COMPRESSION_FILE} names", RECOMPRESS)
    return tensors


def load_compressed_model(run):
    """Rebuild a compressed run's model from its architecture, compression.json and saved weights."""
    info = read_json(run.path / COMPRESSION_FILE, RECOMPRESS, keys=("format",))
    fmt = info.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise RunError(f"{run.path / COMPRESSION_FILE}: unknown format {fmt!r} (this layerwise reads "
                       f"{', '.join(FORMATS)}); {RECOMPRESS}")
    path = _file(run, info, "model_file")
    if fmt == "exported-program":
        if not trusted(run.trust_code):
            raise RunError(f"{path}: a pickled ExportedProgram (torch.export.load can run code from it); {OPT_IN}, "
                           f"or compress the original run again with this layerwise (which saves safetensors)")
        return quant.load_program(path, run.config.model, run.spec)
    net = merge_lora(build_model(run.config.model, run.spec))  # what was compressed: LoRA folded in (run.py)
    if fmt == "pt2e-int8":
        options = info.get("options")
        mode = options.get("quantize") if isinstance(options, dict) else None
        if mode not in ("static", "qat"):
            raise RunError(f"{run.path / COMPRESSION_FILE}: options.quantize is {mode!r}, expected static or qat; "
                           f"{RECOMPRESS}")
        state = _file(run, info, "state_file")
        tensors = _weights(state, fmt)
        try:
            return quant.load_pt2e(net, tensors, mode)
        except RunError as exc:  # the int8 state does not fit: say which file
            raise RunError(f"{state}: {exc}") from exc
    tensors = _weights(path, fmt)
    if fmt == "dynamic-int8":
        return quant.load_dynamic(net, tensors, run.config.model.family)
    if fmt == "pruned":
        if not isinstance(info.get("pruned_shapes"), dict):
            raise run_file_error(run.path / COMPRESSION_FILE, "no 'pruned_shapes' entry", RECOMPRESS)
        pruning.apply_shapes(net, info["pruned_shapes"])
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise run_file_error(path, f"the weights do not fit the {run.config.model.family} model config.yaml and "
                             f"{COMPRESSION_FILE} describe ({state_mismatch(exc)})", RECOMPRESS) from exc
    return net.eval()
