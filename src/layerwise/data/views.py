"""Random views of a batch for self-supervised learning: two differently distorted copies of each
sample that a model must recognise as the same thing.

Images (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"):
SimCLR's ablations show the views' distortions decide what the representation learns, cropping with
colour distortion the strongest pair. Here: a random affine resampling (shift, rotation, zoom: the
crop), brightness and contrast jitter (the colour distortion of a grey image), a random erased
rectangle (DeVries & Taylor 2017, "cutout"), then Gaussian noise after normalisation.

Tables and other feature vectors (Bahri et al. 2022, "SCARF: Self-Supervised Contrastive Learning
using Random Feature Corruption"): each value is, with probability ``rate``, replaced by the same
feature's value in another random row of the batch, a draw from that feature's empirical marginal
that keeps categorical codes valid.

Every function takes a ``torch.Generator`` so that a view is a pure function of its seed (a resumed
run draws the views it would have drawn).
"""

from __future__ import annotations

import torch

from .preprocess.image import random_affine

__all__ = ["image_view", "corrupt_features", "mask_patches"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def image_view(pixels: torch.Tensor, augment: dict, jitter: float, erase: float,
               generator: torch.Generator) -> torch.Tensor:
    """One random view of images (B, C, H, W) in pixels [0, 1], still in pixels."""
    n, device = pixels.shape[0], pixels.device
    x = random_affine(pixels, augment, generator)
    if jitter > 0:  # brightness shifts every pixel, contrast scales it about the image's own mean
        brightness = _uniform(n, -jitter, jitter, generator).view(n, 1, 1, 1).to(device) * 0.5
        contrast = _uniform(n, 1 - jitter, 1 + jitter, generator).view(n, 1, 1, 1).to(device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
    if erase > 0:  # half the images lose a rectangle of up to erase x the image sides
        h, w = x.shape[-2:]
        heights = (_uniform(n, 0.2, 1.0, generator) * erase * h).long().clamp(min=1)
        widths = (_uniform(n, 0.2, 1.0, generator) * erase * w).long().clamp(min=1)
        tops = (torch.rand(n, generator=generator) * (h - heights + 1)).long()
        lefts = (torch.rand(n, generator=generator) * (w - widths + 1)).long()
        chosen = torch.rand(n, generator=generator) < 0.5
        rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        hole = ((rows >= tops.view(n, 1, 1)) & (rows < (tops + heights).view(n, 1, 1))
                & (cols >= lefts.view(n, 1, 1)) & (cols < (lefts + widths).view(n, 1, 1)) & chosen.view(n, 1, 1))
        x = x.masked_fill(hole.unsqueeze(1).to(device), 0.0)
    return x


def corrupt_features(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """SCARF's view of (B, ...) feature values: each value, with probability ``rate``, taken from the
    same position of another random row of the batch."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    replace = (torch.rand(flat.shape, generator=generator) < rate).to(x.device)
    donors = torch.randint(0, n, flat.shape, generator=generator).to(x.device)  # a row per value
    drawn = flat.gather(0, donors)
    return torch.where(replace, drawn, flat).reshape(x.shape)


def mask_patches(batch: int, patches: int, ratio: float, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, patches) bool, True where a patch is masked: exactly ``round(ratio * patches)`` per sample
    (at least one, at most all but one), chosen uniformly at random as in MAE (He et al. 2022)."""
    hidden = min(max(1, round(ratio * patches)), patches - 1) if patches > 1 else 1
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :hidden], True)
    return mask.to(device)
