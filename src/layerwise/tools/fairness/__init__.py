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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...core.errors import ConfigError, DataError, require
from ...runs.tools import ToolOptions, option, register_tool
from .groups import MAX_GROUPS, check_run, group_labels, sensitive_column, split_values
from .metrics import (
    binary_metrics,
    multiclass_metrics,
    parity_summary,
    probabilities,
    threshold_mitigation,
)
from .report import mitigation_rows, plot_groups

__all__ = ["CONSTRAINTS", "MITIGATIONS", "FairnessOptions", "FairnessResult", "fairness_report", "mitigation_rows",
           "print_fairness"]

MITIGATIONS = ("threshold",)
CONSTRAINTS = ("demographic_parity", "equalized_odds")


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
    check_run(run)
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
    found = split_values(run, sensitive, needed)
    train_values = found["train"]  # bin edges come from the training rows, the same for every split
    if data is not None:
        x, y, values, where = _table_inputs(run, data, sensitive)
    else:
        part = run.data.split(split)
        x, y, values, where = part.x, part.y.numpy(), found[split], split
    groups, order, binned = group_labels(values, train_values, bins)
    if len(order) < 2:
        raise DataError(f"--sensitive: column '{sensitive}' has a single group ({order[0]}) in the {where} data; "
                        f"fairness compares groups")
    if len(order) > MAX_GROUPS:
        raise DataError(f"--sensitive: column '{sensitive}' has {len(order)} distinct values in the {where} data; "
                        f"fairness compares a few groups: pick a coarser column (a numeric one is binned: --bins)")

    proba = probabilities(run, x)
    pred = proba.argmax(1)
    result = FairnessResult(sensitive, str(where), len(y), classes, classes[pos] if binary else None, binned,
                            [], {}, 0.0, 0.0)
    if binary:
        y_bin, pred_bin = (y == pos).astype(int), (pred == pos).astype(int)
        result.groups, result.overall, dp, eo = binary_metrics(y_bin, pred_bin, groups, order)
    else:
        result.groups, result.overall, dp, eo, result.per_class = multiclass_metrics(y, pred, groups, order, classes)
    result.demographic_parity_difference, result.equalized_odds_difference = dp, eo

    if mitigate is not None:
        val_groups, _, _ = group_labels(found["val"], train_values, bins)
        val = run.data.val
        fit = (val.x, (val.y.numpy() == pos).astype(int), val_groups)
        after, thresholds = threshold_mitigation(run, constraint, pos, fit, (x, groups), seed)
        result.mitigation = {"method": "threshold", "constraint": constraint, "objective": "accuracy_score",
                             "fit_split": "val", "fit_samples": len(val), "applied_to": str(where),
                             "before": parity_summary(y_bin, pred_bin, groups, order),
                             "after": parity_summary(y_bin, after, groups, order), "thresholds": thresholds}

    out = Path(out_dir) if out_dir is not None else run.path / "fairness"
    out.mkdir(parents=True, exist_ok=True)
    result.path = str(out)
    result.files.append(str(plot_groups(result, out / "groups.png")))
    (out / "fairness.json").write_text(json.dumps(result.to_dict(), indent=2))
    if out_dir is None:
        run.report()  # the Fairness section reads RUN/fairness/
    return result


def _table_inputs(run, data: Any, column: str):
    """(encoded x, class ids, sensitive values, name) of a labelled table or DataFrame."""
    import pandas as pd

    from ...data.inputs import read_inputs
    from ...data.tabular import read_table

    if isinstance(data, pd.DataFrame):
        frame, name = data.reset_index(drop=True), "DataFrame"
    else:
        frame, name = read_table(Path(data).expanduser(), getattr(run.config.data, "delimiter", ",")), str(data)
    inputs = read_inputs(frame, run, need_labels=True)
    return inputs.split.x, inputs.split.y.numpy(), sensitive_column(frame, column, name), name


@fairness_report.printer
def print_fairness(fair: FairnessResult, options: FairnessOptions | None = None) -> None:
    """The groups table, the two differences and the mitigation's before/after (``layerwise evaluate`` too)."""
    from ...core.console import rows_table

    title = f"groups of {fair.column}" + (f" (positive class {fair.positive})" if fair.positive else "")
    rows_table(title, fair.groups, left=("group",))
    print(f"demographic parity difference: {fair.demographic_parity_difference:.4f}")
    print(f"equalized odds difference:     {fair.equalized_odds_difference:.4f}")
    if fair.mitigation is not None:
        rows_table(f"threshold optimizer, {fair.mitigation['constraint']}", mitigation_rows(fair.mitigation),
                   left=("metric",))
    print(f"fairness: {Path(fair.path) / 'fairness.json'}")
