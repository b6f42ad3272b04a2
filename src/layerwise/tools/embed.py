"""Latent codes of autoencoder and VAE runs: ``layerwise embed`` and the report's "Latent space".

An autoencoder's code is its bottleneck ``encode(x)`` (Hinton & Salakhutdinov 2006); a VAE's is the
posterior mean ``mu`` of q(z|x) (Kingma & Welling 2014), deterministic so that the same input always
gets the same code. The report plots the test split's codes in 2-D coloured by class (PCA when the
latent has more than two dimensions) and decodes codes linearly interpolated between two test
images: a smooth strip says the decoder fills the space between the codes it was trained on.

Example::

    result = layerwise.load_run("runs/vae").embed("digits.npz", out="codes.csv")
    result.codes.shape  # (N, latent)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import RunError
from ..core.sections import register_section
from ..data.kinds import input_kind
from ..models import FAMILIES
from ..models.abilities import LatentEncoder, families_with, has_ability
from ..runs.tools import ToolOptions, option, register_tool
from .anomaly import _LabelsAsGiven

__all__ = ["EmbedResult", "class_scatter", "decode_codes", "embed", "encode_batches", "encode_codes"]


@dataclass
class EmbedResult:
    ids: list[str]
    codes: np.ndarray  # (N, latent)
    path: Path | None = None


def encodes(run) -> bool:
    """Whether a run's family has the LatentEncoder ability (known without loading its weights)."""
    return has_ability(FAMILIES.get(run.config.model.family), LatentEncoder)


def embeds(run) -> bool:
    """Whether a run's task makes its model's features the product (a few-shot task's embedding)."""
    from ..tasks import TASKS

    return bool(getattr(TASKS.get(run.config.task), "embeds", False))


def check_encoder(run, verb: str = "embed") -> None:
    if not encodes(run) and not (verb == "embed" and embeds(run)):
        families = " or ".join(families_with(LatentEncoder))
        also = " or a run whose task learns an embedding (prototypical, contrastive, masked_autoencoder, masked_lm, " \
            "clip)" \
            if verb == "embed" else ""
        raise RunError(f"{verb}: {run.path} is a '{run.config.task}' run; {verb} needs an {families} run "
                       f"(model.family: {families}){also}")


def encode_codes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised inputs (B, *input_shape) -> codes (B, latent): the VAE's mu, the autoencoder's code."""
    return model.encode_latent(x)


def decode_codes(run, model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Codes (B, latent) -> images in pixels [0, 1] (B, C, H, W)."""
    decoded = model.decode(z)
    if hasattr(model, "mean"):  # VAE: mean of p(x|z); bernoulli means are already pixels
        decoded = model.mean(decoded)
        if model.likelihood == "bernoulli":
            return decoded
    return run.preprocessing.inputs.denormalize_pixels(decoded)


@torch.no_grad()
def encode_batches(run, x: torch.Tensor, encode) -> np.ndarray:
    """Stored inputs (N, ...) -> ``encode(batch)`` of each preprocessed batch, flattened: (N, D) on the CPU."""
    from ..data.loader import BatchLoader
    from ..data.spec import Split

    loader = BatchLoader(Split(x, torch.zeros(len(x), dtype=torch.long)), run.config.evaluate.batch_size,
                         transform=run.preprocessing.inputs.batch, device=torch.device("cpu"))
    parts = [encode(xb).flatten(1).float() for xb, _ in loader]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def _codes(run, x: torch.Tensor) -> np.ndarray:
    model = run.model.cpu().eval()
    # a task that learns an embedding says what it is (image-text: the joint space), else the features
    encode = encode_codes if encodes(run) else getattr(run.task, "embed", None) or (
        lambda m, xb: m.forward_features(xb))
    return encode_batches(run, x, lambda xb: encode(model, xb))


class EmbedOptions(ToolOptions):
    inputs: Any = option(..., "the inputs to encode: any form predict reads (a file, folder, frame or array); "
                         "for an image-text (clip) run also a .txt file of captions, one per line",
                         argument=True, metavar="INPUT")
    out: Path | None = option(None, "a CSV of id, z0, z1, ... (Python: none unless given)",
                              cli_default=Path("codes.csv"))


@register_tool("embed", EmbedOptions)
def embed(run, options: EmbedOptions) -> EmbedResult:
    """Latent codes of INPUT (autoencoder / vae runs; the features of a few-shot or pretraining run) into a CSV: id, z0, z1, ...

    Returns the codes (N, latent) for inputs in any form ``predict`` reads; ``out`` writes a CSV."""
    source, out = options.inputs, options.out
    check_encoder(run)
    from ..data.inputs import read_inputs

    if _captions(run, source):  # an image-text run: a text file of captions, one per line
        texts = [line for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
        with torch.no_grad():
            codes = run.task.embed_texts(run.model.cpu().eval(), texts).numpy()
        result = EmbedResult([f"line {i + 1}" for i in range(len(texts))], codes)
    else:
        inputs = read_inputs(source, _LabelsAsGiven(run))
        result = EmbedResult(inputs.ids, _codes(run, inputs.split.x))
    if out is not None:
        import pandas as pd

        from ..core.io import atomic_write

        frame = pd.DataFrame(result.codes, columns=[f"z{j}" for j in range(result.codes.shape[1])])
        frame.insert(0, "id", result.ids)
        result.path = Path(out)
        atomic_write(result.path, lambda tmp: frame.to_csv(tmp, index=False))
    return result


def _captions(run, source: Any) -> bool:
    return callable(getattr(run.task, "embed_texts", None)) and isinstance(source, (str, Path)) \
        and Path(source).suffix.lower() == ".txt" and Path(source).is_file()


def _scatter(codes: np.ndarray, labels: np.ndarray, class_names: list[str]) -> str:
    if codes.shape[1] > 2:
        from sklearn.decomposition import PCA

        view, axes_names = PCA(n_components=2, random_state=0).fit_transform(codes), ("PC 1", "PC 2")
    elif codes.shape[1] == 2:
        view, axes_names = codes, ("z0", "z1")
    else:  # a 1-D latent: spread the classes along the y axis so the points do not overlap
        view, axes_names = np.stack([codes[:, 0], labels.astype(float)], 1), ("z0", "class")
    return class_scatter(view, labels, class_names, "test codes in 2-D, coloured by class", axes_names)


def class_scatter(points: np.ndarray, labels: np.ndarray, class_names: list, alt: str,
                  axes_names: tuple[str, str] | None = None) -> str:
    """2-D points (N, 2) coloured by class; ``axes_names`` None: a map whose axes mean nothing (t-SNE)."""
    from ..core.sections import figure_html, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        mask = labels == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=8, color=cmap(k % cmap.N), label=str(name), alpha=0.8)
    if axes_names is None:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel(axes_names[0])
        ax.set_ylabel(axes_names[1])
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2 if len(class_names) > 6 else 1)
    return figure_html(fig, alt)


def _strip(images: torch.Tensor) -> str:
    from ..core.sections import image_grid_html

    return image_grid_html(images, len(images), "latent interpolation between two test images")


@register_section("latent_space")
def _latent_section(run):
    if not encodes(run):
        return None
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None or len(split) < 2:
        return None
    x, y = split.x[:1000], split.y[:1000].numpy()  # a thousand points read well and keep the report quick
    codes = _codes(run, x)
    kind = "VAE posterior means" if run.config.task == "vae" else "bottleneck"
    pca = ", first two principal components" if codes.shape[1] > 2 else ""
    parts = [f"<p>Codes of {len(codes)} test inputs ({kind}, {codes.shape[1]} dimensions{pca}).</p>"]
    labelled = y.ndim == 1 and (y >= 0).all() and run.spec.class_names
    if labelled:
        parts.append(_scatter(codes, y, list(run.spec.class_names)))
    if input_kind(run.spec).picture:
        # endpoints: the first test image and the first one of another class, so the strip morphs
        other = int(np.nonzero(y != y[0])[0][0]) if labelled and (y != y[0]).any() else 1
        a, b = torch.from_numpy(codes[0]), torch.from_numpy(codes[other])
        steps = torch.linspace(0, 1, 10)[:, None]  # (10, 1)
        with torch.no_grad():
            images = decode_codes(run, run.model.cpu().eval(), (1 - steps) * a + steps * b)
        parts.append("<p>Decoded codes on the straight line between two test images (left to right).</p>")
        parts.append(_strip(images))
    return "Latent space", "\n".join(parts)


@embed.printer
def _print(result: EmbedResult, options: EmbedOptions) -> None:
    print(f"codes: {result.path} ({result.codes.shape[0]} x {result.codes.shape[1]})")
