"""MNIST-format IDX files (LeCun et al.), gzipped or raw: train-* and t10k-* pairs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig
from ..core.errors import DataError
from . import DataSource, register_source, where
from .spec import RawData

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxConfig(DataConfig):
    source: Literal["idx"] = "idx"
    path: str = Field(..., description="folder holding train-images/labels and t10k-images/labels IDX files")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file: big-endian magic (0, 0, dtype, ndim), the dimensions, then the raw values."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); is it a complete download?") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); expected MNIST-format data")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header announces {ndim} dimensions but the file ends before them; the file is truncated")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"{path}: IDX header announces {expected} bytes of data but the file holds {len(body)}; the file is truncated")
    return np.frombuffer(bytearray(body), dtype=dtype).reshape(dims)  # bytearray: a writable array, no copy


def _find(folder: Path, prefix: str, what: str) -> Path:
    hits = sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and what in p.name)
    if not hits:
        raise DataError(f"{folder}: no '{prefix}*{what}*' IDX file found; expected MNIST-style names like {prefix}-{what}-idx3-ubyte.gz")
    return hits[0]


@register_source("idx")
class IdxSource(DataSource):
    """train-*/t10k-* images and labels; the t10k files are the test split."""

    Config = IdxConfig
    description = "MNIST-format IDX files (gzipped or raw); t10k-* is the test split"

    def read(self, cfg: IdxConfig, task: str | None) -> RawData:
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise DataError(f"data.path: folder not found: {where(folder)}; point it at the folder of IDX files")
        parts = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images_path, labels_path = _find(folder, prefix, "images"), _find(folder, prefix, "labels")
            images, labels = read_idx(images_path), read_idx(labels_path)
            if images.ndim == 1 and labels.ndim in (3, 4):
                raise DataError(f"{folder}: {images_path.name} holds labels and {labels_path.name} holds images; "
                                f"the two files look swapped: swap their names")
            if images.ndim not in (3, 4):
                raise DataError(f"{images_path}: IDX images must be (N, H, W) or (N, H, W, C); the file holds "
                                f"shape {images.shape}")
            if labels.ndim != 1:
                raise DataError(f"{labels_path}: IDX labels must be one value per image (N,); the file holds "
                                f"shape {labels.shape}")
            if images.ndim == 3:
                images = images[:, None]  # (N, H, W) → (N, 1, H, W)
            elif images.ndim == 4:
                images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) → (N, C, H, W)
            if images.dtype != np.uint8:
                raise DataError(f"{folder}: IDX images must be unsigned bytes (uint8); got {images.dtype}")
            if len(images) != len(labels):
                raise DataError(f"{folder}: {prefix} has {len(images)} images but {len(labels)} labels")
            parts[split] = (images, labels.astype(np.int64))
        return RawData("image", parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1],
                       target="class", origin=str(folder))
