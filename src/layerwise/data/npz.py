"""NumPy .npz archives: arrays ``x`` and ``y``, optionally ``x_test`` and ``y_test``."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig
from ..core.errors import DataError
from . import DataSource, register_source, where
from .spec import RawData


class NpzConfig(DataConfig):
    source: Literal["npz"] = "npz"
    path: str = Field(..., description="a .npz file with arrays x and y (and optionally x_test, y_test)")


def read_npz(path: Path, need_y: bool = True) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data.path: file not found: {where(path)}; check the path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}); save it with numpy.savez") from None
    for key in ("x", "y") if need_y else ("x",):
        if key not in arrays:
            raise DataError(f"{path}: array '{key}' is missing; the archive holds {', '.join(arrays) or 'nothing'}")
    return arrays


def as_kind(x: np.ndarray, path: Path) -> tuple[str, object]:
    """2-D float arrays are tables; 3-D/4-D uint8 (or [0, 1] float) arrays are images."""
    import pandas as pd

    if x.ndim == 2:
        if x.dtype.kind not in "iufb":
            raise DataError(f"{path}: array 'x' has dtype {x.dtype}; expected numbers")
        return "tabular", pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    if x.ndim in (3, 4):
        if x.ndim == 3:
            x = x[:, None]
        elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels-last → channels-first
        if np.issubdtype(x.dtype, np.floating):
            if x.min() < 0 or x.max() > 1:
                raise DataError(f"{path}: float images must lie in [0, 1]; scale them or save uint8 pixels")
            x = np.round(x * 255)
        return "image", x.astype(np.uint8)
    raise DataError(f"{path}: array 'x' has shape {x.shape}; expected (N, features) or images (N, H, W[, C])")


@register_source("npz")
class NpzSource(DataSource):
    Config = NpzConfig
    description = "a .npz archive with x, y (and optional x_test, y_test)"

    def read(self, cfg: NpzConfig, task: str | None) -> RawData:
        path = Path(cfg.path).expanduser()
        arrays = read_npz(path)
        kind, x = as_kind(arrays["x"], path)
        x_test = y_test = None
        if "x_test" in arrays:
            if "y_test" not in arrays:
                raise DataError(f"{path}: has x_test but no y_test; save both or neither")
            _, x_test = as_kind(arrays["x_test"], path)
            y_test = arrays["y_test"]
        return RawData(kind, x, arrays["y"], x_test, y_test, origin=str(path))
