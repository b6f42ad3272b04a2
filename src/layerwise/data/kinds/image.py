"""``image``: one picture per sample, stored as (C, H, W) uint8 pixels.

Batches are normalised on their device by the run's
:class:`~layerwise.data.preprocess.ImagePreprocessor` (per-channel statistics of the training
split), which also augments training batches. The kind owns: that fit (shared with ``video``,
whose frames are images); reading new pictures from an array, a .npz archive, an image file or a
folder (one sub-folder per class gives labels); the serving schema (nested pixel arrays, or image
files on ``POST /predict/image``); and the report's picture of stored samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import DataError
from ..preprocess import ImagePreprocessor
from ..spec import Split
from . import Fitted, InputKind, register_kind
from ._inputs import TABLE_SUFFIXES, Inputs, encode_labels, input_path, read_npz_inputs
from ._serving import InputError, RequestSchema

__all__ = ["ImageKind", "ImageRequest", "fit_pixels"]


def fit_pixels(x: Any, train_idx: np.ndarray, cfg: Any) -> Fitted:
    """Normalisation statistics (and the augmentation config) of uint8 (N, C, H, W) images or
    (N, T, C, H, W) frame sequences, from the training rows."""
    pixels = torch.as_tensor(np.ascontiguousarray(x))
    pre = ImagePreprocessor(pixels.shape[-3], tuple(pixels.shape[-2:]), cfg.normalize,
                            cfg.augment.model_dump() if cfg.augment else None)
    pre.fit(pixels[torch.as_tensor(train_idx)])
    return Fitted(pre, tuple(pixels.shape[1:]))


@register_kind("image")
class ImageKind(InputKind):
    description = "(C, H, W) uint8 pixels, normalised per batch on the device"
    pixels = True
    picture = True
    explained_as = "pixels"

    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        return fit_pixels(x, train_idx, cfg)

    def read_inputs(self, source: Any, run: Any, need_labels: bool = False) -> Inputs:
        """A uint8 (or [0, 1] float) array, a .npz archive, an image file, or a folder of images
        (one sub-folder per class: labelled by the folder's name)."""
        import pandas as pd

        from ..images import IMAGE_SUFFIXES, image_files, load_images
        from ..npz import as_kind

        if isinstance(source, pd.DataFrame):
            raise DataError(f"a DataFrame was given but the run expects {self.name} inputs")
        if isinstance(source, (np.ndarray, torch.Tensor)):
            _, pixels = as_kind(np.asarray(source), Path("array"))
            return _image_inputs(pixels, [str(i) for i in range(len(pixels))], None, run, "array")
        path = input_path(source)
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            raise DataError(f"{path}: a table was given but the run expects {self.name} inputs "
                            f"(an image folder or .npz)")
        if suffix == ".npz":
            x, labels = read_npz_inputs(path, need_labels, self.name)
            return _image_inputs(x, [str(i) for i in range(len(x))], labels, run, str(path))
        pre = run.preprocessing.inputs
        if path.is_file():
            if suffix not in IMAGE_SUFFIXES:
                raise DataError(f"{path}: unsupported input type; give an image, a folder of images or a .npz file")
            return _image_inputs(load_images([path], pre.size, pre.channels), [path.name], None, run, str(path))
        subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs:  # class sub-folders: labelled by folder name
            files, names = [], []
            for d in subdirs:
                found = image_files(d)
                files += found
                names += [d.name] * len(found)
            classes = [str(c) for c in run.preprocessing.classes or []]
            unknown = sorted(set(names) - set(classes))
            if unknown:
                raise DataError(f"{path}: class folder(s) {', '.join(unknown[:5])} are not among the run's classes "
                                f"{', '.join(classes[:12])}; rename or remove them")
            # map folder names back to the original label values
            back = {str(c): c for c in run.preprocessing.classes}
            labels = np.array([back[name] for name in names], dtype=object)
        else:
            files, labels = image_files(path), None
        if not files:
            raise DataError(f"{path}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if need_labels and labels is None:
            raise DataError(f"{path}: evaluation needs labels: put the images in one sub-folder per class")
        pixels = load_images(files, pre.size, pre.channels)
        return _image_inputs(pixels, [str(f.relative_to(path)) for f in files], labels, run, str(path))

    def request_schema(self, run: Any) -> RequestSchema:
        return ImageRequest(run.preprocessing.inputs)

    def samples_html(self, stored: list[Any], titles: list[str], alt: str, color: str | None = None) -> str | None:
        """Stored uint8 pictures in rows of up to 8, each under its title."""
        from ...core.sections import figure_html, pyplot, show_image

        plt = pyplot()
        cols = min(8, len(stored))
        rows = -(-len(stored) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, image, title in zip(axes.flat, stored, titles):
            show_image(ax, image, pixels=False)
            ax.set_title(title, fontsize=8, **({"color": color} if color else {}))
        return figure_html(fig, alt)


def _image_inputs(pixels: np.ndarray, ids: list[str], labels, run, origin: str) -> Inputs:
    """uint8 (N, C, H, W) pictures, checked against the channels and size the run was trained on."""
    pre = run.preprocessing.inputs
    if pixels.shape[1:] != (pre.channels, *pre.size):
        raise DataError(f"{origin}: images have shape {tuple(pixels.shape[1:])}; the model expects "
                        f"{(pre.channels, *pre.size)} (channels, height, width)")
    return Inputs(Split(torch.as_tensor(pixels), encode_labels(labels, run, origin, len(pixels))), ids, labels)


class ImageRequest(RequestSchema):
    """Nested pixel arrays (H, W) or (H, W, C), values 0-255, the size the model was trained on;
    or image files of any size on ``POST /predict/image`` (resized as ``Run.predict`` does)."""

    kind = "image"
    takes_image_files = True

    def __init__(self, pre: ImagePreprocessor):
        self.channels = int(pre.channels)
        self.height, self.width = (int(s) for s in pre.size)

    def describe(self) -> dict[str, Any]:
        shape = [self.height, self.width] if self.channels == 1 else [self.height, self.width, self.channels]
        return {"kind": "image", "shape": shape, "channels": self.channels, "dtype": "integer 0-255",
                "row_format": f"nested lists (height, width{'' if self.channels == 1 else ', channels'}) of pixels",
                "upload": "POST /predict/image with image files (any size; resized as Run.predict does)"}

    def example(self) -> list[Any]:
        pixel = 0 if self.channels == 1 else [0] * self.channels
        return [[[pixel] * self.width] * self.height]

    def check_row(self, i: int, row: Any) -> None:
        expected = f"{self.height}x{self.width}" + ("" if self.channels == 1 else f"x{self.channels}")
        try:
            arr = np.asarray(row)
        except ValueError:  # ragged nesting
            raise InputError(f"inputs[{i}]: expected {expected} pixels, got rows of different lengths") from None
        if arr.dtype.kind not in "iuf":
            raise InputError(f"inputs[{i}]: expected {expected} pixels as nested lists of numbers 0-255, got "
                             f"{'a string' if isinstance(row, str) else 'non-numeric values'}")
        shape = arr.shape
        ok = shape[:2] == (self.height, self.width) and (
            (arr.ndim == 2 and self.channels == 1) or (arr.ndim == 3 and shape[2] == self.channels))
        if not ok:
            got = "x".join(map(str, shape)) if shape else "a single number"
            raise InputError(f"inputs[{i}]: expected {expected} pixels, got {got}")
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255):
            bad = arr[~np.isfinite(arr) | (arr < 0) | (arr > 255)].flat[0]
            raise InputError(f"inputs[{i}]: pixel values must lie in 0..255, got {bad:g}")

    def to_source(self, rows: list[Any]) -> np.ndarray:
        """Checked rows as uint8 (N, C, H, W) pixels."""
        pixels = np.rint(np.asarray(rows, dtype=np.float32)).astype(np.uint8)  # (N, H, W[, C])
        return pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)

