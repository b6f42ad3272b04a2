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
    if path.is_dir():
        raise DataError(f"data.path: {path} is a folder; point it at the .npz file")
    if not path.is_file():
        raise DataError(f"data.path: file not found: {where(path)}; check the path")
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in archive.files:
                arrays[key] = archive[key]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if "allow_pickle" in str(exc):  # unpickling runs code from the file, so it is never done
            what = f"array '{key}' holds Python objects (dtype=object)" if key else "the file holds pickled objects"
            raise DataError(f"{path}: {what}, which are never loaded; save numeric arrays instead, e.g. "
                            f"x.astype(np.float32)") from None
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}); save it with numpy.savez") from None
    for key in ("x", "y") if need_y else ("x",):
        if key not in arrays:
            raise DataError(f"{path}: array '{key}' is missing; the archive holds {', '.join(arrays) or 'nothing'}")
    return arrays


def as_kind(x: np.ndarray, path: Path, name: str = "x") -> tuple[str, object]:
    """2-D float arrays are tables; 3-D/4-D uint8 (or [0, 1] float) arrays are images.

    Integer pixels must lie in [0, 255] and float pixels in [0, 1]: anything else is refused rather
    than wrapped around or clipped into 8 bits."""
    import pandas as pd

    if x.ndim == 2:
        if x.dtype.kind not in "iufb":
            raise DataError(f"{path}: array '{name}' has dtype {x.dtype}; expected numbers")
        return "tabular", pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    if x.ndim in (3, 4):
        if x.ndim == 3:
            x = x[:, None]
        elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels-last → channels-first
        if x.dtype.kind not in "iufb":
            raise DataError(f"{path}: array '{name}' has dtype {x.dtype}; expected pixels (uint8, or floats in [0, 1])")
        if x.size and np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all():
                raise DataError(f"{path}: array '{name}' holds NaN or infinite pixels; images need finite values in [0, 1]")
            if x.min() < 0 or x.max() > 1:
                raise DataError(f"{path}: array '{name}' holds float pixels from {x.min():g} to {x.max():g}; float "
                                f"images must lie in [0, 1]: divide by 255, or save uint8 pixels")
            x = np.round(x * 255)
        elif x.size and x.dtype.kind in "iu" and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: array '{name}' holds pixels from {x.min()} to {x.max()}; 8-bit images need "
                            f"integers in [0, 255] (or floats in [0, 1]): rescale them")
        return "image", x.astype(np.uint8)
    raise DataError(f"{path}: array '{name}' has shape {x.shape}; expected (N, features) or images (N, H, W[, C])")


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
            _, x_test = as_kind(arrays["x_test"], path, "x_test")
            y_test = arrays["y_test"]
        return RawData(kind, x, arrays["y"], x_test, y_test, origin=str(path))
