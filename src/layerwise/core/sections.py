"""Report sections: the registry every layer adds its section to, and the HTML and figure helpers
sections are made of. ``runs.report`` renders them into a run's self-contained ``report.html``.

A section is a function ``(run) -> (title, html) | None``; it returns None for runs it does not
concern, so registering one costs other runs nothing.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable

from .registry import Registry

__all__ = ["REPORT_SECTIONS", "register_section", "pyplot", "figure_html", "show_image", "image_grid_html",
           "html_table"]

REPORT_SECTIONS: Registry[Callable] = Registry("report section", key="report")


def register_section(name: str):
    """Add a report section: ``@register_section("explanations") def section(run): ...``."""
    return REPORT_SECTIONS.register(name)


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_html(fig, alt: str) -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>``; closes the figure."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def curves_html(curves: list[dict[str, Any]], ylabel: str, alt: str) -> str | None:
    """Loss curves by epoch, one line per ``{"label", "curve", "best_epoch", "best", "bold"}`` (a dot
    at each curve's best epoch; non-finite points skipped); a log scale when every value is positive.
    None when no curve has a finite point."""
    import math

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    drawn = False
    for c in curves:
        points = [(epoch, v) for epoch, v in enumerate(c["curve"], 1) if finite(v)]
        if not points:
            continue
        bold = c.get("bold", False)
        (line,) = ax.plot(*zip(*points), "-" if bold or "bold" not in c else "--", linewidth=2.2 if bold else 1.3,
                          label=c["label"])
        if c.get("best_epoch") is not None and finite(c.get("best")):
            ax.scatter([c["best_epoch"]], [c["best"]], s=30, zorder=3, color=line.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if all(v > 0 for c in curves for v in c["curve"] if finite(v)):
        ax.set_yscale("log")  # losses fall by orders of magnitude in the first epochs
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_html(fig, alt)


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
    plt = pyplot()
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        show_image(ax, img)
    return figure_html(fig, alt)


def html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"  # learning rates
    return html.escape(str(value))
