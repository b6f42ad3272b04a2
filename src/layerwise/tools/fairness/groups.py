"""The sensitive column of a fairness report, lined up with the run's splits (``pipeline.split_rows``,
the function training splits with), and its values as groups: categories as they are, a numeric
column in quantile bins of its training values."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import DataError, RunError
from ...data.kinds import input_kind

MAX_GROUPS = 30  # more distinct values than this is an id or a measurement, not a group


def check_run(run) -> None:
    table = input_kind(run.spec).columns  # a sensitive column lines up with the rows of a table
    if not table or run.spec.target != "class":
        what = f"{run.spec.kind} inputs" if not table else f"a {run.spec.target} target"
        raise RunError(f"{run.path}: fairness needs a tabular classification run, and this run has {what}")


def _source_columns(run):
    """The source's rows as a frame (a table source's whole file, dropped columns included), its own
    test frame or None, the (train, val, test) row indices, the labels, its own test labels, its name."""
    from ...data import SOURCES
    from ...data.pipeline import split_rows
    from ...data.tabular import TableConfig, read_table

    cfg = run.config.data
    raw = SOURCES.get(cfg.source)().read(cfg, run.config.task)
    y = np.asarray(raw.y)
    rows = split_rows(y, run.spec.target, cfg, own_test=raw.x_test is not None)
    frame = raw.x
    if isinstance(cfg, TableConfig):
        # the whole table: columns the run dropped are still there, row for row with raw.x
        frame = read_table(Path(cfg.path).expanduser(), getattr(cfg, "delimiter", ","))
    return frame, raw.x_test, rows, y, np.asarray(raw.y_test) if raw.y_test is not None else None, raw.origin


def sensitive_column(frame, column: str, origin: str):
    if column not in frame.columns:
        from ...core.registry import did_you_mean

        names = [str(c) for c in frame.columns]
        raise DataError(f"--sensitive: column '{column}' not found in {origin}{did_you_mean(column, names)}; "
                        f"columns are: {', '.join(names[:30])}{'...' if len(names) > 30 else ''}")
    return frame[column].reset_index(drop=True)


def split_values(run, column: str, splits: tuple[str, ...]) -> dict[str, Any]:
    """The sensitive values (pandas Series, in each split's order) of the run's training rows and of
    ``splits``, each checked against the run's own labels of that split."""
    frame, x_test, (train_idx, val_idx, test_idx), y, y_test, origin = _source_columns(run)
    values = sensitive_column(frame, column, origin)
    found = {"train": values.iloc[train_idx].reset_index(drop=True)}
    for split in splits:
        if split == "test" and test_idx is None:  # the source's own test set
            part, labels = sensitive_column(x_test, column, f"{origin} (test set)"), y_test
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


def group_labels(values, train_values, bins: int) -> tuple[np.ndarray, list[str], list[str] | None]:
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
