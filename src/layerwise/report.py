"""A self-contained HTML report of a run: metrics, curves, confusion matrix, misclassified examples.

Figures are drawn with matplotlib and embedded as base64 PNGs, so the file can be mailed or
archived on its own. Later features add sections through ``REPORT_SECTIONS`` without editing this
module: a section is a function ``(run) -> (title, html) | None``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path
from typing import Any, Callable

from ._registry import Registry

__all__ = ["REPORT_SECTIONS", "register_section", "write_report", "figure_html"]

REPORT_SECTIONS: Registry[Callable] = Registry("report section", key="report")


def register_section(name: str):
    """Add a report section: ``@register_section("explanations") def section(run): ...``."""
    return REPORT_SECTIONS.register(name)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_html(fig, alt: str) -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>``; closes the figure."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _curves(history: list[dict[str, Any]], metric: str) -> str | None:
    if not history:
        return None
    plt = _plt()
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name in zip(axes, ("loss", metric)):
        for prefix, style in (("train_", "-"), ("val_", "--")):
            key = prefix + name
            values = [row.get(key) for row in history]
            if any(isinstance(v, (int, float)) for v in values):
                ax.plot(epochs, values, style, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return figure_html(fig, "learning curves")


def _confusion(cm: list[list[int]], classes: list[str]) -> str:
    import numpy as np

    plt = _plt()
    cm_arr = np.array(cm)
    n = len(classes)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm_arr, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        peak = cm_arr.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm_arr[i, j] > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return figure_html(fig, "confusion matrix")


def _misclassified(run, wrong: list[dict[str, Any]]) -> str | None:
    """A grid of misclassified test images from the run's own data."""
    if run.spec.kind != "image" or not wrong:
        return None
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None:
        return None
    plt = _plt()
    classes = run.spec.class_names
    cols = min(8, len(wrong))
    rows = -(-len(wrong) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, wrong):
        show_image(ax, split.x[item["index"]], pixels=False)
        ax.set_title(f"{classes[item['true']]}→{classes[item['pred']]}", fontsize=8, color="crimson")
    return figure_html(fig, "misclassified examples (true→predicted)")


def show_image(ax, image, pixels: bool = True) -> None:
    """Draw one (C, H, W) image, grey or RGB; ``pixels``: values in [0, 1] (else the stored scale)."""
    img = image.detach().cpu().numpy() if hasattr(image, "detach") else image
    if pixels:
        img = img.clip(0, 1)
    grey = img.shape[0] == 1
    ax.imshow(img[0] if grey else img.transpose(1, 2, 0), cmap="gray" if grey else None,
              **({"vmin": 0, "vmax": 1} if pixels else {}))
    ax.axis("off")


def image_grid_html(images, cols: int, alt: str, size: float = 1.0) -> str:
    """``images`` (n, C, H, W) pixels in [0, 1], ``cols`` to a row, as an embedded figure."""
    plt = _plt()
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        show_image(ax, img)
    return figure_html(fig, alt)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"  # learning rates
    return html.escape(str(value))


def write_report(run) -> Path:
    """Render ``report.html`` for a run (atomically) and return its path."""
    import jinja2

    from . import compress  # noqa: F401  (registers the Compression section; it shows only in compressed runs)
    from . import explain  # noqa: F401  (registers the Explanations section; it shows only after explain)
    from . import fairness  # noqa: F401  (registers the Fairness section; it shows only after evaluate --sensitive)
    from . import latent  # noqa: F401  (registers the Latent space section of autoencoder / vae runs)
    from . import quality  # noqa: F401  (registers the Sample quality section; it shows only after quality)
    from .train.checkpoint import atomic_write

    metrics = run.metrics
    details = metrics.get("details", {})
    history = run.history
    sections: list[tuple[str, str]] = []
    curves = _curves(history, run.task.main_metric)
    if curves:
        sections.append(("Learning curves", curves))
    if "per_class" in details:
        sections.append(("Per-class report", _table(details["per_class"])))
    if "confusion_matrix" in details:
        sections.append(("Confusion matrix", _confusion(details["confusion_matrix"], details["classes"])))
    grid = _misclassified(run, details.get("misclassified", []))
    if grid:
        sections.append(("Misclassified examples", grid))
    for _, section in REPORT_SECTIONS.items():
        produced = section(run)
        if produced:
            sections.append(produced)
    if history:
        sections.append(("Training history", _table(history)))
    template = jinja2.Template((Path(__file__).parent / "templates" / "report.html.j2").read_text(), autoescape=True)
    text = template.render(
        name=run.config.name, path=str(run.path), family=run.config.model.family, task=run.config.task,
        split=metrics.get("split", "test"), metrics=metrics.get("metrics", {}), training=metrics.get("training", {}),
        sections=[(title, jinja2.utils.markupsafe.Markup(body)) for title, body in sections],
        config=run.config.to_yaml(), created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        spec=run.spec,
    )
    path = run.path / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
