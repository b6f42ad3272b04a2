"""Explanations of image runs: attribution heat-maps overlaid on the inputs, one row per method.

Images are explained in raw pixel space [0, 1] with the run's own normalisation inside the forward
(as attacks do), so an attribution says how much each pixel of the picture mattered, and the
baseline ("removed") value is a black pixel. KernelSHAP, LIME and occlusion switch square patches
(superpixels of about 1/7 of the side: 4x4 on 28x28) rather than single pixels, so they need a few
hundred forward passes per image instead of one per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .methods import ATTENTION_METHODS, Explained, attribute, samples_for

__all__ = ["BASELINE", "explain_images", "patch_mask", "patch_size", "pixel_forward", "pixels"]

BASELINE = 0.0  # a black pixel: the "absent" value of the perturbation methods and integrated gradients


def _pixel_space(run):
    # the space attacks perturb images in: one mapping for attacks, adversarial training and explanations
    from ...ops.attacks import AttackSpace

    return AttackSpace(run.spec, run.preprocessing.inputs, None)  # images need no training bounds


def pixels(run, stored: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images (B, C, H, W) as float pixels in [0, 1], the space explanations live in."""
    return _pixel_space(run).from_stored(stored)


def pixel_forward(run, model: torch.nn.Module | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as a function of pixels in [0, 1]: the run's normalisation happens inside, so
    gradients reach the pixels (``model``: another network with the same input, e.g. a randomised copy)."""
    return _pixel_space(run).model_fn((run.model if model is None else model).cpu().eval())


def patch_size(shape: tuple[int, ...]) -> int:
    """Side of the square patches the perturbation methods switch: about 1/7 of the shorter side."""
    return max(1, math.ceil(min(shape[-2:]) / 7))


def patch_mask(shape: tuple[int, ...]) -> torch.Tensor:
    """Patch ids (C, H, W) for one image: all channels of a patch form one feature."""
    channels, height, width = shape
    p = patch_size(shape)
    rows, cols = torch.arange(height) // p, torch.arange(width) // p
    ids = rows[:, None] * (int(cols.max()) + 1) + cols[None, :]
    return ids.expand(channels, height, width).clone()


def explain_images(run, x: torch.Tensor, y: torch.Tensor | None, targets: torch.Tensor, methods: list[str],
                   out_dir: Path, seed: int = 0) -> Explained:
    """Attribute each method for pixels ``x`` (B, C, H, W) in [0, 1] and draw ``overlays.png``."""
    forward = pixel_forward(run)
    mask = patch_mask(tuple(x.shape[1:]))
    p = patch_size(tuple(x.shape[1:]))
    attributions: dict[str, np.ndarray] = {}
    files: list[str] = []
    for method in methods:
        if method in ATTENTION_METHODS:
            continue  # drawn by explain.attention for models with attention layers
        attributions[method] = attribute(method, forward, x, targets, baseline=BASELINE, feature_mask=mask,
                                         samples=samples_for(method), seed=seed,
                                         window=(x.shape[1], p, p)).numpy()
    with torch.no_grad():
        predicted = forward(x).argmax(1)
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_outputs)]
    if attributions:
        files.append(str(plot_overlays(x, attributions, predicted, y, targets, names, Path(out_dir) / "overlays.png")))
    attention = [m for m in methods if m in ATTENTION_METHODS]
    if attention:
        from .attention import attention_figure

        # attention maps read the model's own (normalised) inputs
        files += [str(f) for f in attention_figure(run, run.preprocessing.inputs.normalize_pixels(x), Path(out_dir))]
    summary = {"space": "pixels in [0, 1], normalised inside the forward", "baseline": "black (0)",
               "patch": [p, p]}
    return Explained(attributions, files, summary)


def plot_overlays(x: torch.Tensor, attributions: dict[str, np.ndarray], predicted, y, targets, names: list[str],
                  path: Path) -> Path:
    """One row of inputs, then one row per method: the attribution (summed over channels) over the
    greyed input in a signed colormap (red: towards the explained class, blue: against it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    count = len(x)
    rows = 1 + len(attributions)
    fig, axes = plt.subplots(rows, count, figsize=(1.5 * count + 1.2, 1.55 * rows), squeeze=False)
    images = x.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    grey = images.mean(-1)
    for i in range(count):
        ax = axes[0][i]
        ax.imshow(images[i][..., 0] if images.shape[-1] == 1 else images[i], cmap="gray", vmin=0, vmax=1)
        truth = f" / {names[int(y[i])]}" if y is not None else ""
        wrong = y is not None and int(predicted[i]) != int(y[i])
        ax.set_title(f"{names[int(predicted[i])]}{truth}", fontsize=8, color="crimson" if wrong else "black")
    for row, (method, attr) in enumerate(attributions.items(), start=1):
        for i in range(count):
            heat = attr[i].sum(0)
            peak = float(np.abs(heat).max()) or 1.0  # symmetric scale per image: sign stays readable
            ax = axes[row][i]
            ax.imshow(grey[i], cmap="gray", vmin=0, vmax=1)
            ax.imshow(heat, cmap="bwr", vmin=-peak, vmax=peak, alpha=0.65)
            if int(targets[i]) != int(predicted[i]):
                ax.set_title(f"for {names[int(targets[i])]}", fontsize=7)
        axes[row][0].set_ylabel(method.replace("_", "\n"), fontsize=8)
    axes[0][0].set_ylabel("input\npred / true", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
