"""Fairness of a tabular classification run across the groups of a sensitive column.

Metrics are fairlearn's (Weerts et al. 2023, "Fairlearn: Assessing and Improving Fairness of AI
Systems", JMLR): per group the count, accuracy, selection rate (share predicted positive), true and
false positive rates (``MetricFrame``); overall the demographic parity difference (largest minus
smallest selection rate) and the equalized odds difference (the larger of the TPR gap and the FPR
gap between groups). Multiclass runs get these one class against the rest, the largest reported.

Mitigation: fairlearn's ``ThresholdOptimizer``, the post-processing of Hardt, Price & Srebro 2016,
"Equality of Opportunity in Supervised Learning": a (randomised) threshold per group on the run's
predicted probability of the positive class, chosen on the VALIDATION split to maximise accuracy
under a parity constraint, then applied to the evaluated split. It is evaluated, not deployed:
``predict`` keeps the model's own decisions.

The sensitive column comes from the run's data source, lined up with the run's splits by
``pipeline.split_rows`` (the function training splits with); it may be a feature of the model or a
column of the table the run left out (``data.drop``).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from ..core.errors import ConfigError, DataError, RunError, require
from ..core.sections import register_section
from ..data.kinds import input_kind
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["CONSTRAINTS", "MITIGATIONS", "FairnessOptions", "FairnessResult", "fairness_report", "mitigation_rows",
           "print_fairness"]

MITIGATIONS = ("threshold",)
CONSTRAINTS = ("demographic_parity", "equalized_odds")
MAX_GROUPS = 30  # more distinct values than this is an id or a measurement, not a group


@dataclass
class FairnessResult:
    """Per-group metrics of one split, the two parity differences and an optional mitigation."""

    column: str
    split: str  # test / val / train, or the file evaluated with ``data``
    samples: int
    classes: list[str]
    positive: str | None  # binary: the class counted as selected; multiclass: None (one vs rest)
    bins: list[str] | None  # the quantile bins of a numeric column, None when its values are the groups
    groups: list[dict[str, Any]]  # one row per group: group, count, accuracy, selection rate(s), tpr, fpr
    overall: dict[str, Any]
    demographic_parity_difference: float
    equalized_odds_difference: float
    per_class: dict[str, dict[str, float]] | None = None  # multiclass: both differences per class
    mitigation: dict[str, Any] | None = None
    path: str | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the sensitive column, lined up with the run's splits --------------------------------------------


def _check_run(run) -> None:
    table = input_kind(run.spec).columns  # a sensitive column lines up with the rows of a table
    if not table or run.spec.target != "class":
        what = f"{run.spec.kind} inputs" if not table else f"a {run.spec.target} target"
        raise RunError(f"{run.path}: fairness needs a tabular classification run, and this run has {what}")


def _source_columns(run):
    """The source's rows as a frame (a table source's whole file, dropped columns included), its own
    test frame or None, the (train, val, test) row indices, the labels, its own test labels, its name."""
    from ..data import SOURCES
    from ..data.pipeline import split_rows
    from ..data.tabular import TableConfig, read_table

    cfg = run.config.data
    raw = SOURCES.get(cfg.source)().read(cfg, run.config.task)
    y = np.asarray(raw.y)
    rows = split_rows(y, run.spec.target, cfg, own_test=raw.x_test is not None)
    frame = raw.x
    if isinstance(cfg, TableConfig):
        # the whole table: columns the run dropped are still there, row for row with raw.x
        frame = read_table(Path(cfg.path).expanduser(), getattr(cfg, "delimiter", ","))
    return frame, raw.x_test, rows, y, np.asarray(raw.y_test) if raw.y_test is not None else None, raw.origin


def _column(frame, column: str, origin: str):
    if column not in frame.columns:
        from ..core.registry import did_you_mean

        names = [str(c) for c in frame.columns]
        raise DataError(f"--sensitive: column '{column}' not found in {origin}{did_you_mean(column, names)}; "
                        f"columns are: {', '.join(names[:30])}{'...' if len(names) > 30 else ''}")
    return frame[column].reset_index(drop=True)


def _split_values(run, column: str, splits: tuple[str, ...]) -> dict[str, Any]:
    """The sensitive values (pandas Series, in each split's order) of the run's training rows and of
    ``splits``, each checked against the run's own labels of that split."""
    frame, x_test, (train_idx, val_idx, test_idx), y, y_test, origin = _source_columns(run)
    values = _column(frame, column, origin)
    found = {"train": values.iloc[train_idx].reset_index(drop=True)}
    for split in splits:
        if split == "test" and test_idx is None:  # the source's own test set
            part, labels = _column(x_test, column, f"{origin} (test set)"), y_test
        else:
            idx = {"train": train_idx, "val": val_idx, "test": test_idx}[split]
            part, labels = values.iloc[idx].reset_index(drop=True), y[idx]
        expected = run.data.split(split).y.numpy()
        if len(labels) != len(expected) or not np.array_equal(run.preprocessing.encode_labels(labels, origin),
                                                              expected):
            raise RunError(f"{origin}: its rows no longer match the run's {split} split (the data changed since "
                           f"training); evaluate fairness on the data the run was trained on, or pass --data FILE")
        found[split] = part
    return found


def _group_labels(values, train_values, bins: int) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Group names per sample, the groups in display order, and the bins of a binned numeric column.

    A numeric column with more than ``bins`` distinct values is cut at quantiles of its training
    values (the same edges for every split, so validation and test groups are the same groups).
    """
    import pandas as pd

    missing = values.isna().to_numpy()
    numeric = values.dtype.kind in "iuf"
    if numeric and train_values.nunique() > bins:
        edges = np.unique(np.nanquantile(train_values.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)))
        inner = edges[1:-1]
        names = ([f"< {inner[0]:g}"] + [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(inner)]
                 + [f">= {inner[-1]:g}"]) if len(inner) else [f"{edges[0]:g}"]
        codes = np.digitize(values.to_numpy(dtype=float), inner)
        labels = np.array([names[min(c, len(names) - 1)] for c in codes], dtype=object)
        order, binned = names, names
    else:
        def name(v) -> str:
            return str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)

        labels = np.array([name(v) for v in values.tolist()], dtype=object)
        order = sorted(set(labels[~missing].tolist()), key=lambda s: (pd.to_numeric(s, errors="coerce"), s)
                       if numeric else (0, s))
        binned = None
    labels[missing] = "missing"
    present = [g for g in order if g in set(labels.tolist())] + (["missing"] if missing.any() else [])
    return labels, present, binned


# -- metrics ------------------------------------------------------------------------------------------


def _probabilities(run, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """(N, classes) predicted probabilities of the run's model for stored (encoded) inputs."""
    model = run.model.cpu().eval()
    transform = run.preprocessing.inputs.batch
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            parts.append(run.task.predict(model(transform(x[start:start + batch_size])))["proba"])
    return torch.cat(parts).numpy()


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, NaN (a rate with no sample to measure) to None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _frame(metrics: dict, y_true, y_pred, groups, order: list[str]) -> tuple[list[dict], dict]:
    """fairlearn's MetricFrame: rows per group (in ``order``) and the overall values."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group with no positives has no TPR: NaN, shown as such
        frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred,
                            sensitive_features=pd.Series(groups, name="group"))
    by_group = frame.by_group.reindex(order)
    rows = [{"group": str(g), **{k: _plain(v) for k, v in row.items()}} for g, row in by_group.iterrows()]
    overall = {k: _plain(v) for k, v in frame.overall.items()}
    for row in [*rows, overall]:
        row["count"] = int(row["count"])
    return rows, overall


def _binary_metrics(y_true, y_pred, groups, order):
    """Per group: count, accuracy, selection rate, TPR, FPR; the DP and EO differences (0/1 labels)."""
    from fairlearn.metrics import (
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    metrics = {"count": count, "accuracy": accuracy_score, "selection_rate": selection_rate,
               "tpr": partial(true_positive_rate, pos_label=1), "fpr": partial(false_positive_rate, pos_label=1)}
    rows, overall = _frame(metrics, y_true, y_pred, groups, order)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dp = demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
        eo = equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    return rows, overall, float(dp), float(eo)


def _multiclass_metrics(y_true, y_pred, groups, order, classes: list[str]):
    """Per group: count, accuracy and each class's selection rate; DP/EO per class one vs rest."""
    from fairlearn.metrics import (
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        selection_rate,
    )
    from sklearn.metrics import accuracy_score

    metrics = {"count": count, "accuracy": accuracy_score}
    metrics.update({f"selection_rate[{name}]": partial(selection_rate, pos_label=c) for c, name in enumerate(classes)})
    rows, overall = _frame(metrics, y_true, y_pred, groups, order)
    per_class = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c, name in enumerate(classes):
            t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
            per_class[name] = {
                "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=groups)),
                "equalized_odds_difference": float(equalized_odds_difference(t, p, sensitive_features=groups))}
    dp = max(v["demographic_parity_difference"] for v in per_class.values())
    eo = max(v["equalized_odds_difference"] for v in per_class.values())
    return rows, overall, dp, eo, per_class


# -- mitigation -----------------------------------------------------------------------------------------


class _RunClassifier(ClassifierMixin, BaseEstimator):
    """The run's model as the prefit scikit-learn classifier ThresholdOptimizer wraps:
    ``predict_proba`` over encoded feature rows, column 1 the positive class's probability."""

    def __init__(self, run=None, positive: int = 1):
        self.run = run
        self.positive = positive
        self.classes_ = np.array([0, 1])

    def fit(self, X, y):  # prefit: never trained here
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def predict_proba(self, X) -> np.ndarray:
        p = _probabilities(self.run, torch.as_tensor(np.asarray(X, dtype=np.float32)))[:, self.positive]
        p = p.astype(np.float64)  # fairlearn writes float64 mixtures into a series of these scores
        return np.stack([1 - p, p], axis=1)


def _threshold(run, constraint: str, positive: int, fit: tuple, apply: tuple, seed: int):
    """Fit ThresholdOptimizer on ``fit`` = (x, y 0/1, groups) and predict 0/1 for ``apply``'s x and groups."""
    from fairlearn.postprocessing import ThresholdOptimizer

    (x_fit, y_fit, g_fit), (x_apply, g_apply) = fit, apply
    unseen = sorted(set(g_apply.tolist()) - set(g_fit.tolist()))
    if unseen:
        raise DataError(f"--mitigate: group(s) {', '.join(unseen[:5])} do not occur in the validation split, so no "
                        f"threshold can be fitted for them; use fewer --bins or a larger data.val_fraction")
    optimizer = ThresholdOptimizer(estimator=_RunClassifier(run, positive), constraints=constraint,
                                   objective="accuracy_score", prefit=True, predict_method="predict_proba")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.fit(x_fit.numpy(), y_fit, sensitive_features=g_fit)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"--mitigate: fairlearn cannot fit thresholds on the validation split ({first})") from None
    pred = np.asarray(optimizer.predict(x_apply.numpy(), sensitive_features=g_apply, random_state=seed)).astype(int)
    thresholds = {str(g): {key: (_plain(v) if key.startswith("p") else str(v)) for key, v in rule.items()}
                  for g, rule in optimizer.interpolated_thresholder_.interpolation_dict.items()}
    return pred, thresholds


def _summary(y_true, y_pred, groups, order) -> dict[str, Any]:
    rows, overall, dp, eo = _binary_metrics(y_true, y_pred, groups, order)
    return {"accuracy": overall["accuracy"], "demographic_parity_difference": dp, "equalized_odds_difference": eo,
            "selection_rate": {row["group"]: row["selection_rate"] for row in rows}}


# -- the entry point ------------------------------------------------------------------------------------


class FairnessOptions(ToolOptions):
    sensitive: str = option(..., "fairness: metrics per group of this column (tabular runs)", metavar="COLUMN")
    split: Literal["test", "val", "train"] = option("test", "the split whose groups are compared")
    data: Any = option(None, "a labelled table to compare groups of instead of the split", metavar="PATH")
    positive: Any = option(None, "fairness: the positive class (default: the second class)", metavar="LABEL")
    bins: int = option(4, "fairness: quantile bins of a numeric column")
    mitigate: str | None = option(None, "fairness: 'threshold' (fairlearn's ThresholdOptimizer)", metavar="METHOD")
    constraint: str = option("demographic_parity", "fairness: demographic_parity or equalized_odds")
    out_dir: Path | None = option(None, "write here instead of RUN/fairness/ (the report is then left alone)",
                                  cli=False)
    seed: int = option(0, "seeds the threshold optimizer's randomized predictions", cli=False)


@register_tool("fairness", FairnessOptions)
def fairness_report(run, options: FairnessOptions) -> FairnessResult:
    """Compare a tabular classification RUN's metrics across the groups of a column, into RUN/fairness/.

    Group metrics of ``split`` (or of a labelled table ``data``) by the column ``sensitive``.
    Writes ``fairness.json`` and ``groups.png`` into ``RUN/fairness/`` (or ``out_dir``) and, when
    writing into the run, refreshes its report. ``mitigate="threshold"`` also fits fairlearn's
    ThresholdOptimizer on the validation split under ``constraint`` and reports before/after.

    >>> result = run.fairness("sex", mitigate="threshold")                 # doctest: +SKIP
    >>> result.demographic_parity_difference, result.mitigation["after"]   # doctest: +SKIP
    """
    sensitive, split, data, positive, mitigate, out_dir, bins, constraint, seed = (
        options.sensitive, options.split, options.data, options.positive, options.mitigate, options.out_dir,
        options.bins, options.constraint, options.seed)
    if mitigate is not None and mitigate not in MITIGATIONS:
        raise ConfigError(f"--mitigate: unknown method '{mitigate}'; choose one of {', '.join(MITIGATIONS)}")
    if constraint not in CONSTRAINTS:
        raise ConfigError(f"--constraint: unknown constraint '{constraint}'; choose one of {', '.join(CONSTRAINTS)}")
    if bins < 2:
        raise ConfigError(f"--bins: must be at least 2, got {bins}")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split: unknown split '{split}'; choose train, val or test")
    _check_run(run)
    require("fairlearn", "fairness")
    classes = list(run.spec.class_names or map(str, range(run.spec.num_classes)))
    binary = len(classes) == 2
    if positive is not None and not binary:
        raise ConfigError(f"--positive: applies to binary targets; this run has {len(classes)} classes, each "
                          f"measured one against the rest")
    if positive is not None and str(positive) not in classes:
        raise ConfigError(f"--positive: '{positive}' is not a class of this run; classes are: {', '.join(classes)}")
    pos = classes.index(str(positive)) if positive is not None else 1
    if mitigate is not None and not binary:
        raise ConfigError(f"--mitigate: the threshold optimizer needs a binary target; this run has {len(classes)} classes")
    if mitigate is not None and (run.data.val is None or len(run.data.val) == 0):
        raise ConfigError("--mitigate: thresholds are fitted on the validation split, and this run has none "
                          "(data.val_fraction is 0); train with a validation split")

    # the evaluated samples, their true labels and their sensitive values
    needed = (() if data is not None else (split,)) + (("val",) if mitigate is not None else ())
    found = _split_values(run, sensitive, needed)
    train_values = found["train"]  # bin edges come from the training rows, the same for every split
    if data is not None:
        x, y, values, where = _table_inputs(run, data, sensitive)
    else:
        part = run.data.split(split)
        x, y, values, where = part.x, part.y.numpy(), found[split], split
    groups, order, binned = _group_labels(values, train_values, bins)
    if len(order) < 2:
        raise DataError(f"--sensitive: column '{sensitive}' has a single group ({order[0]}) in the {where} data; "
                        f"fairness compares groups")
    if len(order) > MAX_GROUPS:
        raise DataError(f"--sensitive: column '{sensitive}' has {len(order)} distinct values in the {where} data; "
                        f"fairness compares a few groups: pick a coarser column (a numeric one is binned: --bins)")

    proba = _probabilities(run, x)
    pred = proba.argmax(1)
    result = FairnessResult(sensitive, str(where), len(y), classes, classes[pos] if binary else None, binned,
                            [], {}, 0.0, 0.0)
    if binary:
        y_bin, pred_bin = (y == pos).astype(int), (pred == pos).astype(int)
        result.groups, result.overall, dp, eo = _binary_metrics(y_bin, pred_bin, groups, order)
    else:
        result.groups, result.overall, dp, eo, result.per_class = _multiclass_metrics(y, pred, groups, order, classes)
    result.demographic_parity_difference, result.equalized_odds_difference = dp, eo

    if mitigate is not None:
        val_groups, _, _ = _group_labels(found["val"], train_values, bins)
        val = run.data.val
        fit = (val.x, (val.y.numpy() == pos).astype(int), val_groups)
        after, thresholds = _threshold(run, constraint, pos, fit, (x, groups), seed)
        result.mitigation = {"method": "threshold", "constraint": constraint, "objective": "accuracy_score",
                             "fit_split": "val", "fit_samples": len(val), "applied_to": str(where),
                             "before": _summary(y_bin, pred_bin, groups, order),
                             "after": _summary(y_bin, after, groups, order), "thresholds": thresholds}

    out = Path(out_dir) if out_dir is not None else run.path / "fairness"
    out.mkdir(parents=True, exist_ok=True)
    result.path = str(out)
    result.files.append(str(_plot(result, out / "groups.png")))
    (out / "fairness.json").write_text(json.dumps(result.to_dict(), indent=2))
    if out_dir is None:
        run.report()  # the Fairness section reads RUN/fairness/
    return result


def _table_inputs(run, data: Any, column: str):
    """(encoded x, class ids, sensitive values, name) of a labelled table or DataFrame."""
    import pandas as pd

    from ..data.inputs import read_inputs
    from ..data.tabular import read_table

    if isinstance(data, pd.DataFrame):
        frame, name = data.reset_index(drop=True), "DataFrame"
    else:
        frame, name = read_table(Path(data).expanduser(), getattr(run.config.data, "delimiter", ",")), str(data)
    inputs = read_inputs(frame, run, need_labels=True)
    return inputs.split.x, inputs.split.y.numpy(), _column(frame, column, name), name


# -- pictures and the report ----------------------------------------------------------------------------


def _plot(result: FairnessResult, path: Path) -> Path:
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
    from ..core.sections import html_table

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


@fairness_report.printer
def print_fairness(fair: FairnessResult, options: FairnessOptions | None = None) -> None:
    """The groups table, the two differences and the mitigation's before/after (``layerwise evaluate`` too)."""
    from ..core.console import rows_table

    title = f"groups of {fair.column}" + (f" (positive class {fair.positive})" if fair.positive else "")
    rows_table(title, fair.groups, left=("group",))
    print(f"demographic parity difference: {fair.demographic_parity_difference:.4f}")
    print(f"equalized odds difference:     {fair.equalized_odds_difference:.4f}")
    if fair.mitigation is not None:
        rows_table(f"threshold optimizer, {fair.mitigation['constraint']}", mitigation_rows(fair.mitigation),
                   left=("metric",))
    print(f"fairness: {Path(fair.path) / 'fairness.json'}")
