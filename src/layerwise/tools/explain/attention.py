"""Attention maps and attention rollout for the transformer families (transformer, vit).

* attention maps: each layer's attention probabilities (B, heads, T, T), recomputed explicitly by
  the family's ``attention_maps`` (the fused kernel used in training never forms them). Row i is
  how position i spreads its attention over the positions; every row sums to 1.
* attention rollout: Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers". Attention
  weights of one layer say little about what the *input* positions contribute, because each layer
  mixes positions that earlier layers already mixed. Rollout follows the mixing through the layers:
  average the heads, add the identity for the residual connection (``0.5 * A + 0.5 * I``),
  renormalise the rows, and multiply the layers' matrices, first layer rightmost:
  ``R = A_L ... A_2 A_1``. Row i of ``R`` is how much position i's final representation draws on
  each input position. The prediction reads the CLS token (row 0), the last position, or the mean
  of the positions, depending on the model's ``pooling``; :func:`prediction_row` picks that row.

Any model with an ``attention_maps(x)`` method qualifies, so a family added later only needs that
method; any other run gets a one-line :class:`~layerwise.core.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import ConfigError
from ...data.kinds import input_kind

__all__ = [
    "attention_families",
    "attention_figure",
    "attention_labels",
    "attention_maps",
    "check_attention",
    "plot_attention_grid",
    "plot_rollout",
    "prediction_row",
    "rollout",
    "save_figure",
    "summarize_attention",
]

MAX_TICKS = 40  # label at most this many positions on an axis; more become unreadable


def attention_families() -> list[str]:
    """The registered families whose models expose ``attention_maps``."""
    from ...models import FAMILIES

    return sorted(name for name, cls in FAMILIES.items() if callable(getattr(cls, "attention_maps", None)))


def check_attention(model: torch.nn.Module) -> None:
    """A one-line ConfigError unless ``model`` can give its attention maps."""
    if not callable(getattr(model, "attention_maps", None)):
        config = getattr(model, "config", None)
        family = getattr(config, "family", type(model).__name__)
        if getattr(config, "bags", 1) > 1:
            raise ConfigError(f"explain: attention maps are one network's; this run is a bag of {config.bags} "
                              f"{family} members: train with model.bags: 1 to see them")
        raise ConfigError(f"explain: attention needs a transformer-family model "
                          f"({', '.join(attention_families())}); this run's family is {family}")


def attention_maps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's attention probabilities for inputs ``x``: a list of (B, heads, T, T), on the cpu.

    T counts every position the model attends over, a CLS token included (position 0).

    >>> maps = attention_maps(run.model, x)   # doctest: +SKIP
    >>> maps[0].sum(-1)                       # all ones  # doctest: +SKIP
    """
    check_attention(model)
    was_training = model.training
    model.eval()  # no attention dropout: the maps are the ones the prediction used
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            maps = model.attention_maps(x.to(device))
    finally:
        model.train(was_training)
    return [m.detach().float().cpu() for m in maps]


def rollout(maps: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer maps (B, heads, T, T) -> (B, T, T).

    Heads are averaged; with ``residual`` the identity is mixed in half and half (the residual
    stream carries each position past the attention) and rows renormalised; then the layers are
    multiplied, the first layer rightmost. Rows of the result sum to 1.

    >>> rolled = rollout(attention_maps(model, x))   # doctest: +SKIP
    """
    if not maps:
        raise ConfigError("explain: attention rollout needs at least one layer's attention map")
    joint = None
    for layer in maps:
        a = layer.float().mean(dim=1)  # (B, T, T): the heads averaged
        if residual:
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint  # (B, T, T): this layer after everything before it
    return joint


def prediction_row(model: torch.nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """The row of a (B, T, T) attention or rollout matrix that feeds the prediction: (B, T).

    The CLS token's row when the model has one, the last position's for ``pooling: last`` and for a
    language model (its explained output is the next token after the last position), else the mean
    of the rows (``pooling: mean`` averages every position's output).
    """
    if getattr(getattr(model, "spec", None), "target", None) == "token":
        return matrix[:, -1]
    if getattr(model, "cls_token", None) is not None:
        return matrix[:, 0]
    if getattr(getattr(model, "config", None), "pooling", "mean") == "last":
        return matrix[:, -1]
    return matrix.mean(dim=1)


def _has_cls(model: torch.nn.Module) -> bool:
    return getattr(model, "cls_token", None) is not None


def attention_labels(run, x: torch.Tensor) -> tuple[list[str], list[int]]:
    """Axis labels of the first sample's attention positions and the positions worth showing.

    Tokens: the decoded tokens, padding left out; float sequences: time steps ``t0, t1...``; images
    (vit): patch indices ``p0, p1...`` in row-major order. A CLS token, when the model has one, is
    position 0 and labelled ``[CLS]``.
    """
    model = run.model
    positions: list[str]
    keep: list[int]
    kind = input_kind(run.spec)
    if kind.picture:  # the model's patches, not the input's own axes
        grid = getattr(model, "grid", None)
        count = grid[0] * grid[1] if grid else 0
        positions = [f"p{i}" for i in range(count)]
        keep = list(range(count))
    else:  # decoded tokens, time steps...: the kind labels its positions
        positions, keep = kind.position_labels(run.preprocessing.inputs, x[0])
    if _has_cls(model):
        return ["[CLS]"] + positions, [0] + [k + 1 for k in keep]
    return positions, keep


def _plt():
    from ...core.sections import pyplot as report_plt

    return report_plt()


def _ticks(ax, labels: list[str]) -> None:
    n = len(labels)
    every = max(1, -(-n // MAX_TICKS))
    idx = list(range(0, n, every))
    ax.set_xticks(idx)
    ax.set_xticklabels([labels[i] for i in idx], rotation=90, fontsize=6)
    ax.set_yticks(idx)
    ax.set_yticklabels([labels[i] for i in idx], fontsize=6)


def plot_attention_grid(maps: list[torch.Tensor], labels: list[str], keep: list[int], title: str = ""):
    """A figure of layers (rows) x heads (columns): the first sample's attention over the kept positions."""
    plt = _plt()
    layers, heads = len(maps), maps[0].shape[1]
    size = 2.2 if len(keep) <= 24 else 3.2
    fig, axes = plt.subplots(layers, heads, figsize=(size * heads + 1.2, size * layers + 0.6), squeeze=False,
                             layout="constrained")
    index = torch.tensor(keep, dtype=torch.long)
    shown = [labels[k] for k in keep]
    subs = [m[0].index_select(1, index).index_select(2, index).numpy() for m in maps]  # each (heads, K, K)
    top = max(float(s.max()) for s in subs)  # one colour scale: panels compare
    for layer, sub in enumerate(subs):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(sub[head], cmap="viridis", vmin=0.0, vmax=top, aspect="auto", interpolation="nearest")
            _ticks(ax, shown)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="attention probability")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_rollout(scores: np.ndarray, labels: list[str], title: str, grid: tuple[int, int] | None = None,
                 image: np.ndarray | None = None):
    """The prediction row of the rollout: bars over positions, or for vit a patch-grid heat map
    upsampled over the image (``image`` (H, W) or (H, W, 3) in [0, 1])."""
    plt = _plt()
    if grid is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(scores) + 1.5), 2.8))
        ax.bar(range(len(scores)), scores, color="#c2410c")
        ax.set_xticks(range(len(scores)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_ylabel("rollout weight")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        return fig
    # vit: the patch grid, upsampled over the image
    heat = scores.reshape(grid)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
    if image is not None:
        axes[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
        axes[0].set_title("input", fontsize=9)
        big = np.kron(heat, np.ones((image.shape[0] // grid[0], image.shape[1] // grid[1])))
        axes[1].imshow(image, cmap="gray" if image.ndim == 2 else None)
        axes[1].imshow(big, cmap="inferno", alpha=0.6)
    else:
        axes[0].axis("off")
        axes[1].imshow(heat, cmap="inferno")
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def _display_image(x: torch.Tensor) -> np.ndarray:
    """One preprocessed image (C, H, W) as (H, W) or (H, W, 3) in [0, 1] for display (min-max scaled)."""
    img = x.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy()


def save_figure(fig, path: Path, alt: str) -> str:
    """Save a matplotlib figure as PNG at ``path`` (closing it) and return an ``<img>`` embedding it."""
    plt = _plt()
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def attention_figure(run, x: torch.Tensor, out_dir: str | Path, maps: list[torch.Tensor] | None = None
                     ) -> list[str]:
    """Write the attention pictures of the first sample of ``x`` (preprocessed model inputs) into
    ``out_dir`` and return their paths: ``attention_layers.png`` (a grid of layers x heads with the
    tokens, time steps or patch indices on the axes) and ``attention_rollout.png`` (the rollout row
    that feeds the prediction, over the tokens, or over the patch grid on top of the image for vit).

    Works for any run whose model has ``attention_maps`` (transformer, vit); any other family gets a
    one-line ConfigError. ``maps``: already computed :func:`attention_maps` of ``x``.

    >>> attention_figure(load_run("runs/vit-digits-..."), x, "runs/vit-digits-.../explain")  # doctest: +SKIP
    """
    return [path for path, _ in _attention_figures(run, x, Path(out_dir), maps)]


def _attention_figures(run, x: torch.Tensor, out_dir: Path, maps: list[torch.Tensor] | None = None
                       ) -> list[tuple[str, str]]:
    """(path, <img> html) of each attention picture, see :func:`attention_figure`."""
    model = run.model
    check_attention(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    if maps is None:
        maps = attention_maps(model, x[:1])
    labels, keep = attention_labels(run, x)
    written = []
    path = out_dir / "attention_layers.png"
    fig = plot_attention_grid(maps, labels, keep, "attention of sample 0 (row: query, column: key)")
    written.append((str(path), save_figure(fig, path, "attention maps per layer and head")))

    row = prediction_row(model, rollout([m[:1] for m in maps]))[0].numpy()  # (T,)
    cls = 1 if _has_cls(model) else 0
    grid = tuple(model.grid) if input_kind(run.spec).picture and hasattr(model, "grid") else None
    path = out_dir / "attention_rollout.png"
    if grid is not None:
        fig = plot_rollout(row[cls:], labels[cls:], "attention rollout over patches", grid, _display_image(x[0]))
    else:
        inputs = [k for k in keep if k >= cls]  # the input positions (no CLS, no padding)
        hidden = 1.0 - float(row[inputs].sum()) - (float(row[0]) if cls else 0.0)
        note = f"; {hidden:.0%} on padding" if hidden > 0.005 else ""
        fig = plot_rollout(row[inputs], [labels[k] for k in inputs], f"attention rollout of the prediction{note}")
    written.append((str(path), save_figure(fig, path, "attention rollout")))
    return written


def summarize_attention(model: torch.nn.Module, maps: list[torch.Tensor]) -> dict[str, Any]:
    """JSON-able facts about the maps: layers, heads, positions."""
    return {"layers": len(maps), "heads": int(maps[0].shape[1]), "positions": int(maps[0].shape[-1]),
            "cls_token": _has_cls(model)}
