"""A self-contained HTML report of a run: metrics, curves, confusion matrix, misclassified examples.

Figures are drawn with matplotlib and embedded as base64 PNGs, so the file can be mailed or
archived on its own. Every other section (explanations, robustness, samples, energy...) registers
itself in ``core.sections.REPORT_SECTIONS`` from its own module, whatever its layer, and is rendered
here in the order of their names: a section is a function ``(run) -> (title, html) | None``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..core.io import atomic_write
from ..core.sections import REPORT_SECTIONS, figure_html, html_table, pyplot
from ..data.kinds import input_kind
from . import baselines as _baselines  # noqa: F401  (registers the report's Baselines section)

__all__ = ["write_report"]

def _curves(history: list[dict[str, Any]], metric: str) -> str | None:
    if not history:
        return None
    plt = pyplot()
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

    plt = pyplot()
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
    """Misclassified test samples from the run's own data, as the input kind shows samples (a grid
    of pictures; kinds without a picture of a sample show none)."""
    if not wrong:
        return None
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None:
        return None
    classes = run.spec.class_names
    return input_kind(run.spec).samples_html([split.x[item["index"]] for item in wrong],
                                             [f"{classes[item['true']]}→{classes[item['pred']]}" for item in wrong],
                                             "misclassified examples (true→predicted)", color="crimson")


def write_report(run) -> Path:
    """Render ``report.html`` for a run (atomically) and return its path."""
    import jinja2


    metrics = run.metrics
    details = metrics.get("details", {})
    history = run.history
    sections: list[tuple[str, str]] = []
    curves = _curves(history, run.task.main_metric)
    if curves:
        sections.append(("Learning curves", curves))
    if "per_class" in details:
        sections.append(("Per-class report", html_table(details["per_class"])))
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
        sections.append(("Training history", html_table(history)))
    template = jinja2.Template((Path(__file__).parents[1] / "templates" / "report.html.j2").read_text(), autoescape=True)
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
