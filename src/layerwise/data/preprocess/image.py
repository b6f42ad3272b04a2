"""Images and videos: stored uint8 batches to normalized floats on the device, with optional
augmentation of training batches (random shift, rotation, zoom and flip in one affine resampling).

The per-channel mean and standard deviation are fitted on the training split (a strided sample of
it), and saved with the run, so that prediction inputs are normalized exactly as training batches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from . import register_preprocessor

__all__ = ["ImagePreprocessor"]


@register_preprocessor("image")
class ImagePreprocessor:
    """uint8 (N, C, H, W) images or (N, T, C, H, W) videos → normalized float, with optional
    augmentation of training batches (each frame on its own)."""

    def __init__(self, channels: int, size: tuple[int, int], normalize: bool = True, augment: dict | None = None):
        self.channels = channels
        self.size = tuple(size)
        self.normalize = normalize
        self.augment = augment or None
        self._stats_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean_ = [0.0] * channels
        self.std_ = [1.0] * channels

    def fit(self, images: torch.Tensor) -> "ImagePreprocessor":
        if self.normalize:
            # statistics from a strided sample: exact enough and bounded in cost for big sets
            images = images.reshape(-1, *images.shape[-3:])  # video: every frame counts as an image
            sample = images[:: max(1, len(images) // 20000)].float().div_(255)
            self._stats_cache.clear()
            self.mean_ = sample.mean(dim=(0, 2, 3)).tolist()
            self.std_ = [max(s, 1e-6) for s in sample.std(dim=(0, 2, 3)).tolist()]
        return self

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        """Normalize a stored uint8 batch on its device; augment it when ``train``.

        ``seed`` makes the augmentation of this batch reproducible (the loader derives it from
        the run's seed, the epoch and the batch index, so a resumed run augments identically).
        """
        frames = x.shape[:-3]  # (N,) for images, (N, T) for video: frames are normalized alike
        x = x.reshape(-1, *x.shape[-3:]).float().div_(255)
        generator = None
        if train and self.augment:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            x = random_affine(x, self.augment, generator)
        x = self.normalize_pixels(x)
        if train and self.augment and self.augment.get("noise"):
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + self.augment["noise"] * noise
        return x.reshape(*frames, *x.shape[1:])

    def normalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (..., C, H, W), to the normalized floats the model sees (differentiable:
        attacks perturb pixels and normalize inside the forward)."""
        mean, std = self._stats(x.device)
        return (x - mean[0]) / std[0]

    def denormalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize_pixels`: model inputs back to pixels (adversarial training
        perturbs the preprocessed training batches in pixel space)."""
        mean, std = self._stats(x.device)
        return x * std[0] + mean[0]

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, C, 1, 1) tensors, made once per device rather than per batch."""
        if device not in self._stats_cache:
            self._stats_cache[device] = (torch.tensor(self.mean_, device=device).view(1, -1, 1, 1),
                                         torch.tensor(self.std_, device=device).view(1, -1, 1, 1))
        return self._stats_cache[device]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", "channels": self.channels, "size": list(self.size), "normalize": self.normalize,
                "augment": self.augment, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImagePreprocessor":
        pre = cls(data["channels"], tuple(data["size"]), data["normalize"], data.get("augment"))
        pre.mean_, pre.std_ = data["mean"], data["std"]
        return pre


def random_affine(x: torch.Tensor, cfg: dict, generator: torch.Generator | None) -> torch.Tensor:
    """Random shift, rotation, zoom and flip of a batch in one affine resampling (vectorized)."""
    n = x.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(cfg.get("rotation", 0.0)))
    scale = 1 + uniform(cfg.get("scale", 0.0))
    shift = torch.stack([uniform(cfg.get("shift", 0.0)), uniform(cfg.get("shift", 0.0))], dim=1) * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.get("flip") else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
