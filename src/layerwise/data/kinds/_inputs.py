"""What reading new inputs shares across kinds: the result, label encoding, paths and .npz archives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import DataError
from ..preprocess import numeric_target
from ..spec import Split

__all__ = ["TABLE_SUFFIXES", "Inputs", "encode_labels", "input_path", "read_npz_inputs"]

TABLE_SUFFIXES = {".csv", ".parquet", ".pq", ".tsv"}  # files read as a table


@dataclass
class Inputs:
    """New inputs for a run, as ``read_inputs`` returns them."""

    split: Split  # stored inputs (uint8 images / float features / token ids) and encoded labels (or -1 / NaN)
    ids: list[str]  # one per sample: a file name, a row number
    labels: np.ndarray | None  # the original label values, when the input had them


def encode_labels(labels: Any, run: Any, origin: str, n: int) -> torch.Tensor:
    """Labels as the run's targets encode them; none given: -1 (classes) or NaN (values) for ``n`` samples."""
    if labels is None or run.spec.target == "caption":  # image-text runs embed inputs: their labels are unused
        if run.spec.target in ("class", "caption"):
            return torch.full((n,), -1, dtype=torch.long)
        return torch.full((n, run.spec.num_targets), float("nan"))
    if run.spec.target == "numeric":
        labels = numeric_target(np.asarray(labels), origin)
    return torch.as_tensor(run.preprocessing.encode_labels(np.asarray(labels), origin))


def input_path(source: Any) -> Path:
    """``source`` as an existing path; DataError naming it otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"input not found: {path}")
    return path


def read_npz_inputs(path: Path, need_labels: bool, kind: str) -> tuple[Any, np.ndarray | None]:
    """(x, labels or None) of a .npz archive (``x``/``y``, or only ``x_test``/``y_test``), whose
    arrays must hold ``kind`` data (a table or images, see :func:`layerwise.data.npz.as_kind`)."""
    from ..npz import as_kind, read_npz

    arrays = read_npz(path, need_y=need_labels)
    x_key, y_key = ("x_test", "y_test") if "x_test" in arrays and "x" not in arrays else ("x", "y")
    data_kind, x = as_kind(arrays[x_key], path, x_key)
    if data_kind != kind:
        raise DataError(f"{path}: holds {data_kind} data but the run expects {kind} inputs")
    return x, arrays.get(y_key)
