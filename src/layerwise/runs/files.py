"""Reading a run's files: a damaged or mismatched file is one line that names it and what to do.

A run directory can be damaged after training: a copy or a download that stopped early, a disk
error, another run's file copied over, an editor that saved it in another encoding. Every reader
of a run's YAML, JSON and weights goes through these helpers, so such a file ends in one
:class:`RunError` naming the file and the fix, with the lower error chained for ``--debug``, never
a ``JSONDecodeError`` or ``SafetensorError`` traceback. Weights are also refused when they are not
finite: a model of NaNs would predict class 0 for everything without a word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core.errors import RunError

__all__ = ["RESTORE", "RECOMPRESS", "run_file_error", "read_json", "read_yaml", "read_weights"]

RESTORE = "restore it from a copy of the run, or train the run again"
RECOMPRESS = "compress the original run again"


def run_file_error(path: Path, problem: str, fix: str) -> RunError:
    """``PATH: problem; fix``, the shape of every damaged-file message.

    >>> raise run_file_error(run / "data.json", "not valid JSON", RESTORE) from exc   # doctest: +SKIP
    """
    return RunError(f"{path}: {problem}; {fix}")


def read_json(path: Path, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, holding at least ``keys``; a one-line error ending in ``fix`` otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise run_file_error(path, "not UTF-8 text (damaged, or saved in another encoding)", fix) from exc
    except json.JSONDecodeError as exc:
        problem = "empty" if not exc.doc.strip() else f"not valid JSON (line {exc.lineno}: {exc.msg})"
        raise run_file_error(path, problem, fix) from exc
    if not isinstance(data, dict):
        raise run_file_error(path, f"expected a JSON object, found {type(data).__name__}", fix)
    absent = [k for k in keys if k not in data]
    if absent:
        raise run_file_error(path, f"no '{absent[0]}' entry", fix)
    return data


def read_yaml(path: Path, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping in ``path`` (read with ``safe_load``), holding at least ``keys``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise run_file_error(path, "not UTF-8 text (damaged, or saved in another encoding)", fix) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise run_file_error(path, f"not valid YAML ({getattr(exc, 'problem', None) or exc}{where})", fix) from exc
    if not isinstance(data, dict):
        raise run_file_error(path, "empty" if data is None else f"expected a mapping, found {type(data).__name__}", fix)
    absent = [k for k in keys if k not in data]
    if absent:
        raise run_file_error(path, f"no '{absent[0]}' section (truncated?)", fix)
    return data


def read_weights(path: Path, fix: str,
                 allow_infinite: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the safetensors file ``path``; every floating-point tensor finite
    (``allow_infinite``: only free of NaN, for a quantization state whose unused observers keep +-inf)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError) as exc:  # empty, truncated, or not safetensors at all
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = "empty" if path.stat().st_size == 0 else f"not a readable safetensors file ({reason})"
        raise run_file_error(path, problem, fix) from exc
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = tensor.isnan() if allow_infinite else ~tensor.isfinite()
        if bool(bad.any()):
            raise run_file_error(path, f"the weights are not finite (NaN or infinity in '{key}')", fix)
    return tensors, metadata
