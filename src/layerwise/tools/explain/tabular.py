"""Explanations of tabular runs in terms of the original columns.

The model sees encoded features (standardised numbers, one-hot levels, embedding indices); a reader
thinks in columns. Attributions are computed on the encoded features and summed back to the column
they came from (all one-hot levels of ``color`` give one ``color`` bar); KernelSHAP and LIME switch
the features of a column together (a feature mask of column ids), so they attribute each column once.
The "removed" value is 0 in the encoded space: the training mean of a numeric column, no level of a
one-hot column. Embedding indices are integers, so gradient methods give those columns zero; the
perturbation methods cover them.

Global importance is the mean |attribution| per column over the explained samples, shown next to
scikit-learn's permutation importance (Breiman 2001; ``sklearn.inspection.permutation_importance``)
computed with the run's model on the split, a reference that needs no gradient and no baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .methods import ATTENTION_METHODS, Explained, attribute, samples_for

__all__ = ["BASELINE", "columns", "explain_tabular", "permutation_scores", "plot_attributions", "plot_importance"]

BASELINE = 0.0  # the training center of scaled columns (mean or median), no level of one-hot columns
GROUPED = ("kernel_shap", "lime")  # methods that attribute a column once, through the feature mask
PERMUTATION_ROWS = 1000  # permutation importance on at most this many rows of the split
PERMUTATION_REPEATS = 5


def columns(run) -> tuple[list[str], torch.Tensor]:
    """The original column names and, per encoded feature, the index of its column (F,)."""
    layout = run.preprocessing.inputs.layout  # where each column's features sit (one-hot levels, date parts...)
    ids = [c for c, block in enumerate(layout) for _ in range(block.width)]
    return [block.column for block in layout], torch.tensor(ids, dtype=torch.long)


def _values(run, x: torch.Tensor, names: list[str], ids: torch.Tensor) -> list[list[str]]:
    """Each sample's original column values as text (numbers unscaled, dates and levels by name)."""
    decoded = run.preprocessing.inputs.decode(x.numpy())
    return [[f"{decoded[name][i]:.4g}" if isinstance(decoded[name], np.ndarray) else str(decoded[name][i])
             for name in names] for i in range(len(x))]


def to_columns(method: str, attr: np.ndarray, ids: torch.Tensor, count: int) -> np.ndarray:
    """(B, F) encoded-feature attributions -> (B, columns): sum over a column's features, or one of
    them for methods that already attributed the column as a group (the value is repeated)."""
    out = np.zeros((len(attr), count), dtype=np.float64)
    for c in range(count):
        cells = attr[:, (ids == c).numpy()]
        out[:, c] = cells[:, 0] if method in GROUPED else cells.sum(1)
    return out


def explain_tabular(run, x: torch.Tensor, y: torch.Tensor | None, targets: torch.Tensor, methods: list[str],
                    out_dir: Path, seed: int = 0, split: str = "test") -> Explained:
    """Attribute each method for encoded rows ``x`` (B, F); write ``attributions.png`` and
    ``importance.png`` into ``out_dir``."""
    model = run.model.cpu().eval()
    names, ids = columns(run)
    attributions: dict[str, np.ndarray] = {}
    for method in methods:
        if method in ATTENTION_METHODS:
            continue
        attributions[method] = attribute(method, model, x, targets, baseline=BASELINE, feature_mask=ids,
                                         samples=samples_for(method), seed=seed, window=(1,)).numpy()
    per_column = {m: to_columns(m, a, ids, len(names)) for m, a in attributions.items()}
    values = _values(run, x, names, ids)
    with torch.no_grad():
        outputs = model(x)
    class_names = run.spec.class_names or [str(i) for i in range(run.spec.num_outputs)]
    if run.spec.target == "class":
        predicted = [class_names[int(i)] for i in outputs.argmax(1)]
        truth = None if y is None else [class_names[int(i)] for i in y]
    else:  # regression outputs are scaled; report the explained output in the data's units
        scaler = run.preprocessing.scaler
        values_out = scaler.inverse(outputs) if scaler is not None else outputs
        predicted = [f"{float(v[int(t)]):.4g}" for v, t in zip(values_out, targets)]
        truth = None
    permutation = permutation_scores(run, split, seed, names, ids)
    importance = {m: np.abs(a).mean(0).tolist() for m, a in per_column.items()}
    out_dir = Path(out_dir)
    files = []
    if per_column:
        fig = plot_attributions(per_column, names, values, predicted, truth)
        files.append(_save(fig, out_dir / "attributions.png"))
    files.append(_save(plot_importance(importance, permutation, names), out_dir / "importance.png"))
    summary: dict[str, Any] = {
        "columns": names, "values": values,
        "column_attributions": {m: a.tolist() for m, a in per_column.items()},
        "global_importance": importance,
        "permutation_importance": permutation,
        "baseline": "0 in the encoded space (training mean; no one-hot level)",
    }
    if run.spec.categorical:
        summary["note"] = ("embedding-encoded columns get zero from gradient methods (indices are not "
                           "differentiable); KernelSHAP, LIME and occlusion attribute them")
    return Explained(attributions, files, summary)


class _ColumnModel:
    """The run's model behind scikit-learn's estimator interface, over *row indices per column*.

    ``X[i, c]`` is the row whose value column ``c`` takes in sample ``i``; permuting a column of X
    (what permutation_importance does) therefore moves all encoded features of one original column
    (every one-hot level) together.
    """

    def __init__(self, model: torch.nn.Module, encoded: torch.Tensor, ids: torch.Tensor, classify: bool):
        self.model, self.encoded, self.ids, self.classify = model, encoded, ids, classify

    def fit(self, X, y=None):  # scikit-learn's argument names
        return self  # already trained

    def predict(self, X):
        rows = torch.as_tensor(np.asarray(X), dtype=torch.long)[:, self.ids]  # (N, F): source row per feature
        x = torch.gather(self.encoded, 0, rows)
        with torch.no_grad():
            out = self.model(x)
        return out.argmax(1).numpy() if self.classify else out.numpy()

    def score(self, X, y):
        """Accuracy, or R^2 (averaged over targets) for regression: greater is better for both."""
        pred = self.predict(X)
        y = np.asarray(y)
        if self.classify:
            return float((pred == y).mean())
        y = y.reshape(len(y), -1)
        pred = pred.reshape(len(pred), -1)
        residual = ((y - pred) ** 2).sum(0)
        total = ((y - y.mean(0)) ** 2).sum(0)
        return float(np.mean(1 - residual / np.where(total > 0, total, 1.0)))


def permutation_scores(run, split: str, seed: int, names: list[str], ids: torch.Tensor) -> dict[str, Any]:
    """scikit-learn's permutation importance of each original column on (up to 1000 rows of) a split."""
    from sklearn.inspection import permutation_importance

    part = run.data.split(split)
    pick = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:PERMUTATION_ROWS]
    encoded = run.preprocessing.inputs.batch(part.x[pick]).float()
    y = part.y[pick].numpy()
    classify = run.spec.target == "class"
    estimator = _ColumnModel(run.model.cpu().eval(), encoded, ids, classify)
    rows = np.repeat(np.arange(len(encoded))[:, None], len(names), axis=1)
    result = permutation_importance(estimator, rows, y, scoring=lambda est, X, y: est.score(X, y),
                                    n_repeats=PERMUTATION_REPEATS, random_state=seed)
    return {"mean": result.importances_mean.tolist(), "std": result.importances_std.tolist(),
            "score": "accuracy" if classify else "r2", "rows": len(encoded), "repeats": PERMUTATION_REPEATS}


def _labels(names: list[str], values: list[str]) -> list[str]:
    return [f"{n} = {v}" for n, v in zip(names, values)]


def plot_attributions(per_column: dict[str, np.ndarray], names: list[str], values: list[list[str]],
                      predicted: list[str], truth: list[str] | None, top: int = 12):
    """A grid of signed bar charts: one row per sample, one column per method; each bar is labelled
    with the column's name and the sample's value (the ``top`` largest |attribution| per chart)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(per_column)
    count = len(values)
    bars = min(top, len(names))
    fig, axes = plt.subplots(count, len(methods), figsize=(3.6 * len(methods) + 1.5, (0.22 * bars + 0.8) * count),
                             squeeze=False)
    for i in range(count):
        labels = _labels(names, values[i])
        for j, method in enumerate(methods):
            scores = per_column[method][i]
            order = np.argsort(-np.abs(scores))[:bars][::-1]  # largest on top
            ax = axes[i][j]
            ax.barh(range(len(order)), scores[order], color=["#c0392b" if s > 0 else "#2e6fba" for s in scores[order]])
            ax.axvline(0, color="black", linewidth=0.6)
            ax.set_yticks(range(len(order)), [labels[k] for k in order], fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
            truth_text = f", true {truth[i]}" if truth else ""
            header = f"{method}\n" if i == 0 else ""
            ax.set_title(header + (f"sample {i}: predicted {predicted[i]}{truth_text}" if j == 0 else ""), fontsize=8)
    fig.tight_layout()
    return fig


def plot_importance(importance: dict[str, list[float]], permutation: dict[str, Any], names: list[str]):
    """Global importance per column, each method scaled to its largest column (= 1), next to the
    permutation importance scaled the same way."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = {m: np.asarray(v, dtype=float) for m, v in importance.items()}
    series["permutation (sklearn)"] = np.asarray(permutation["mean"], dtype=float)
    order = np.argsort(-series["permutation (sklearn)"])[::-1]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) * len(series) ** 0.5 + 1.5))
    for k, (label, vals) in enumerate(series.items()):
        peak = np.abs(vals).max() or 1.0
        ax.barh(np.arange(len(names)) + k * width, (vals / peak)[order], height=width, label=label)
    ax.set_yticks(np.arange(len(names)) + 0.4 - width / 2, [names[i] for i in order], fontsize=8)
    ax.set_xlabel("relative importance (each method's largest column = 1)")
    ax.set_title("global importance: mean |attribution| vs permutation importance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
