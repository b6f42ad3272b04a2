"""``video``: a sequence of frames per sample, stored as (T, C, H, W) uint8 pixels.

Each frame is an image: the preprocessing is the image kind's (per-channel statistics over every
frame, normalised per batch on the device, augmentation frame by frame). A video is not one
picture, so conv variants, image grids and pixel explanations do not apply; new inputs and
serving are not read yet (the defaults refuse them, naming the kind).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Fitted, InputKind, register_kind
from .image import fit_pixels

__all__ = ["VideoKind"]


@register_kind("video")
class VideoKind(InputKind):
    description = "(T, C, H, W) uint8 frames, each normalised like an image"
    pixels = True

    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        return fit_pixels(x, train_idx, cfg)
