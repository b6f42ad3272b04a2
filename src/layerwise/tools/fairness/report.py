"""The fairness report's pictures (a bar chart per metric, a bar per group) and its section."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.sections import register_section

if TYPE_CHECKING:
    from . import FairnessResult


def plot_groups(result: FairnessResult, path: Path) -> Path:
    """One bar chart per metric, a bar per group (selection rate before and after a mitigation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in result.groups[0] if k not in ("group", "count")]
    names = [row["group"] for row in result.groups]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 + 1.0 * len(names) * len(keys) ** 0.5 * 1.2, 3.4),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [np.nan if row[key] is None else row[key] for row in result.groups]
        width = 0.8
        if key == "selection_rate" and result.mitigation is not None:
            after = [result.mitigation["after"]["selection_rate"][g] for g in names]
            width = 0.4
            ax.bar(np.arange(len(names)) + 0.2, after, width, label="after mitigation", color="tab:green")
        ax.bar(np.arange(len(names)) - (0.2 if width < 0.8 else 0), values, width, color="tab:blue",
               label="before" if width < 0.8 else None)
        ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                      fontsize=8)
        if width < 0.8:
            ax.legend(fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(key, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result.column} on {result.split}: DP difference {result.demographic_parity_difference:.3f}, "
                 f"EO difference {result.equalized_odds_difference:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@register_section("fairness")
def _report_section(run) -> tuple[str, str] | None:
    """The latest fairness evaluation of the run (RUN/fairness/), when there is one."""
    from ...core.sections import html_table

    folder = run.path / "fairness"
    if not (folder / "fairness.json").is_file():
        return None
    data = json.loads((folder / "fairness.json").read_text())
    what = (f"positive class <b>{html.escape(str(data['positive']))}</b>" if data["positive"] is not None
            else "each class against the rest (largest difference)")
    summary = (f"<p>Groups of <b>{html.escape(data['column'])}</b> on the {html.escape(data['split'])} data "
             f"({data['samples']} samples), {what}: demographic parity difference "
             f"<b>{data['demographic_parity_difference']:.4f}</b>, equalized odds difference "
             f"<b>{data['equalized_odds_difference']:.4f}</b> (0 is parity; see docs/fairness.md).</p>")
    groups = [{k: "-" if v is None else v for k, v in row.items()} for row in data["groups"]]  # no rate to show
    parts = [summary, html_table(groups)]
    if (folder / "groups.png").is_file():
        image = base64.b64encode((folder / "groups.png").read_bytes()).decode("ascii")
        parts.append(f'<img alt="fairness metrics by group" src="data:image/png;base64,{image}">')
    mitigation = data.get("mitigation")
    if mitigation:
        parts.append(f"<p>Threshold optimizer ({html.escape(mitigation['constraint'])}), fitted on the validation "
                     f"split ({mitigation['fit_samples']} samples), applied to the {html.escape(mitigation['applied_to'])} "
                     f"data. Evaluated, not deployed: predictions still use the model alone.</p>")
        parts.append(html_table(mitigation_rows(mitigation)))
    return "Fairness", "\n".join(parts)


def mitigation_rows(mitigation: dict[str, Any]) -> list[dict[str, Any]]:
    """The before/after table: accuracy, both differences and each group's selection rate."""
    before, after = mitigation["before"], mitigation["after"]
    rows = [{"metric": key, "before": before[key], "after": after[key]}
            for key in ("accuracy", "demographic_parity_difference", "equalized_odds_difference")]
    rows += [{"metric": f"selection_rate[{g}]", "before": before["selection_rate"][g],
              "after": after["selection_rate"][g]} for g in before["selection_rate"]]
    return rows
