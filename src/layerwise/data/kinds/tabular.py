"""``tabular``: one row of a table per sample, stored as (F,) float32 features.

The kind decides what each column is: numeric (numbers, or text that parses as numbers), a date
(text that parses as dates, or listed in ``data.date_columns``), or categorical (the rest, and any
listed in ``data.categorical_columns``); it refuses numeric row identifiers. Then
:class:`~layerwise.data.preprocess.TabularPreprocessor`, fitted on the training rows, imputes, scales
and encodes them. The kind also owns: the layout the model families read from the spec (one-hot
groups, scalar positions and their quantile bin edges); reading new rows from a DataFrame, an array,
a CSV/Parquet table or a 2-D .npz array; and the serving schema (rows as objects keyed by column,
or lists in column order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...core.errors import DataError
from ..preprocess import TabularPreprocessor, numeric_or_junk
from ..preprocess.tabular import EMBEDDING_MAX_LEVELS, MISSING, ONEHOT_MAX_LEVELS
from ..preprocess.columns import DATE_SHARE, date_format, parse_dates, refuse_identifiers
from ..spec import Split
from . import Fitted, InputKind, register_kind
from ._inputs import TABLE_SUFFIXES, Inputs, encode_labels, input_path, read_npz_inputs
from ._serving import FLOAT32_MAX, InputError, RequestSchema, finite_number, preview, type_name

__all__ = ["PLE_BINS", "TabularKind", "TabularRequest", "quantile_bins"]

# bins per scalar feature for piecewise-linear numeric embeddings (Gorishniy et al. 2022, "On
# Embeddings for Numerical Features in Tabular Deep Learning", use up to 48 quantile bins)
PLE_BINS = 48


@register_kind("tabular")
class TabularKind(InputKind):
    description = "(F,) float32 features: a table's columns, imputed, scaled and encoded"
    columns = True
    explained_as = "columns"

    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        """Numeric, date and categorical columns (types judged on every row of the source), and the
        preprocessing fitted on the training rows."""
        categorical = list(getattr(cfg, "categorical_columns", None) or [])
        listed_dates = list(getattr(cfg, "date_columns", None) or [])
        numeric, dates = [], []
        for col in x.columns:
            if col in categorical:
                continue
            column = x[col]
            if col in listed_dates:
                fmt, share = date_format(column, mixed=True)
                if fmt is None:
                    raise DataError(f"data.date_columns: column '{col}' is not dates: only {share:.0%} of its values "
                                    f"parse as dates (at least {DATE_SHARE:.0%} must); fix its values or remove it "
                                    f"from data.date_columns")
                dates.append(col)
            elif column.dtype.kind in "iufb":
                numeric.append(col)
            elif numeric_or_junk(column, col, origin) is not None:
                numeric.append(col)
            elif date_format(column)[0] is not None:
                dates.append(col)
            else:
                categorical.append(col)
        refuse_identifiers(x, numeric, origin, keep=list(getattr(cfg, "features", None) or []))
        pre = TabularPreprocessor(numeric, categorical, getattr(cfg, "categorical_encoding", "auto"),
                                  getattr(cfg, "impute", "mean"), cfg.normalize, origin,
                                  scaling=getattr(cfg, "scaling", "auto"),
                                  missing_indicators=getattr(cfg, "missing_indicators", "auto"), dates=dates,
                                  onehot_max_levels=getattr(cfg, "onehot_max_levels", ONEHOT_MAX_LEVELS),
                                  embedding_max_levels=getattr(cfg, "embedding_max_levels", EMBEDDING_MAX_LEVELS))
        train = x.iloc[train_idx]
        pre.fit(train)
        names = pre.feature_names
        positions = pre.numeric_positions
        matrix = pre.transform(train)  # (N_train, F): the bin edges are in the units the model sees
        spec = {"feature_names": names, "categorical": pre.categorical_slots, "onehot": pre.onehot_groups,
                "numeric": positions, "bins": [quantile_bins(matrix[:, p]) for p in positions]}
        return Fitted(pre, (len(names),), spec)

    def encode(self, preprocessor: TabularPreprocessor, x: Any) -> torch.Tensor:
        return torch.from_numpy(preprocessor.transform(x))

    def take(self, x: Any, idx: np.ndarray) -> Any:
        return x.iloc[idx].reset_index(drop=True)

    def concat(self, parts: list[Any]) -> Any:
        import pandas as pd

        return pd.concat(parts, ignore_index=True)

    def read_inputs(self, source: Any, run: Any, need_labels: bool = False) -> Inputs:
        """A DataFrame, an (N, F) array in the run's column order, a CSV/Parquet table or a .npz archive."""
        import pandas as pd

        names = run.preprocessing.inputs.columns
        if isinstance(source, pd.DataFrame):
            return _frame_inputs(source.reset_index(drop=True), run, "DataFrame", need_labels)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            arr = np.asarray(source)
            if arr.ndim != 2 or arr.shape[1] != len(names):
                raise DataError(f"array of shape {arr.shape}: expected (N, {len(names)}) columns "
                                f"{', '.join(names[:8])}")
            return _frame_inputs(pd.DataFrame(arr, columns=names), run, "array", need_labels)
        path = input_path(source)
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            from ..tabular import read_table

            return _frame_inputs(read_table(path, getattr(run.config.data, "delimiter", ",")),
                                 run, str(path), need_labels)
        if suffix == ".npz":
            x, labels = read_npz_inputs(path, need_labels, self.name)
            # an array has no column names: its columns are the run's feature columns, in order
            if x.shape[1] != len(names):
                raise DataError(f"{path}: 'x' has {x.shape[1]} columns; the run expects {len(names)} "
                                f"({', '.join(names[:8])}{'...' if len(names) > 8 else ''})")
            frame = x.set_axis(names, axis=1)
            inputs = _frame_inputs(frame, run, str(path), False)
            return Inputs(Split(inputs.split.x, encode_labels(labels, run, str(path), len(frame))), inputs.ids, labels)
        raise DataError(f"{path}: expected a .csv, .parquet or .npz file for this tabular run")

    def request_schema(self, run: Any) -> RequestSchema:
        return TabularRequest(run.preprocessing.inputs)


def quantile_bins(values: np.ndarray, bins: int = PLE_BINS) -> list[float]:
    """Increasing bin edges of a feature's training values (N,): up to ``bins`` bins between quantiles;
    a feature of at most ``bins + 1`` distinct values has them as its edges (a 0/1 flag: [0, 1]);
    at least two edges (a constant gets [v, v + 1])."""
    values = values.astype(np.float64)
    edges = np.unique(values)
    if len(edges) > bins + 1:
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + 1.0])
    return edges.tolist()


def _frame_inputs(frame, run, origin: str, need_labels: bool) -> Inputs:
    """A frame's feature columns encoded as in training; its target column(s), when present, as labels."""
    target_cols = run.spec.target_names or ["target"]
    has = all(c in frame.columns for c in target_cols)
    if need_labels and not has:
        raise DataError(f"{origin}: target column '{target_cols[0]}' is missing; evaluation needs labels")
    labels = None
    if has:
        labels = frame[target_cols[0]].to_numpy() if len(target_cols) == 1 else frame[target_cols].to_numpy()
    x = torch.from_numpy(run.preprocessing.inputs.transform(frame, origin))
    return Inputs(Split(x, encode_labels(labels, run, origin, len(x))), [str(i) for i in range(len(x))], labels)


class TabularRequest(RequestSchema):
    """Rows as objects keyed by column name, or lists in column order (the order of ``GET /metadata``).

    Every column must be present; ``null`` is a missing value (imputed as in training); numeric
    columns take finite numbers that float32 holds once scaled (``NaN``, ``Infinity``, ``1e999``,
    ``1e308`` are refused, not imputed), date columns strings in the training data's format,
    categorical columns strings or numbers."""

    kind = "tabular"

    def __init__(self, pre: TabularPreprocessor):
        self.pre = pre
        self.numeric = list(pre.numeric)
        self.dates = list(pre.dates)
        self.categorical = list(pre.categorical)
        self.columns = pre.columns

    def describe(self) -> dict[str, Any]:
        example = self.pre.example()
        columns = {c: {"name": c, "dtype": "number", "missing": "null, imputed with the training fill value"}
                   for c in self.numeric}
        columns.update({c: {"name": c, "dtype": "date", "example": example[c],
                            "missing": "null, imputed with the training fill value of each date part"}
                        for c in self.dates})
        columns.update({c: {"name": c, "dtype": "string", "levels": [v for v in self.pre.levels_.get(c, []) if
                                                                      v != MISSING],
                            "unknown": "unseen values share one extra level" + (
                                "" if MISSING in self.pre.levels_.get(c, []) else ", and so does null")}
                        for c in self.categorical})
        return {"kind": "tabular", "columns": [columns[c] for c in self.columns],
                "row_format": "an object keyed by column name, or a list of values in this column order"}

    def example(self) -> list[Any]:
        row = self.pre.example()
        row.update({c: round(float(row[c]), 3) for c in self.numeric})
        return [{c: row[c] for c in self.columns}]

    def check_row(self, i: int, row: Any) -> None:
        if isinstance(row, dict):
            unknown = [k for k in row if k not in self.columns]
            if unknown:
                raise InputError(f"inputs[{i}]: unknown column {unknown[0]!r}; the run's columns are "
                                 f"{', '.join(self.columns)}")
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise InputError(f"inputs[{i}]: column {missing[0]!r} is missing (send null for a missing value)")
            items = row.items()
        elif isinstance(row, list):
            if len(row) != len(self.columns):
                raise InputError(f"inputs[{i}]: expected {len(self.columns)} values ({', '.join(self.columns)}), "
                                 f"got {len(row)}")
            items = zip(self.columns, row)
        else:
            raise InputError(f"inputs[{i}]: expected an object keyed by column name or a list of "
                             f"{len(self.columns)} values, got {type_name(row)}")
        for name, value in items:
            if value is None:
                continue
            if name in self.numeric:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"inputs[{i}].{name}: expected a number or null, got {type_name(value)} "
                                     f"{preview(value)}")
                number = finite_number(f"inputs[{i}].{name}", value)
                # scaled, a value that float32 holds can still overflow it (standardising a column of tiny
                # spread); robust and quantile scalings are bounded and never do
                scaled = self.pre.scale_value(name, number)
                if not math.isfinite(scaled) or abs(scaled) > FLOAT32_MAX:
                    raise InputError(f"inputs[{i}].{name}: {number:g} is too large for this column (training "
                                     f"{'mean' if self.pre.scaling_.get(name, 'standard') == 'standard' else 'center'} "
                                     f"{self.pre.mean_[name]:g}, scale {self.pre.std_[name]:g}): it overflows float32 "
                                     f"once scaled")
            elif name in self.dates:
                if not isinstance(value, str):
                    raise InputError(f"inputs[{i}].{name}: expected a date as a string or null, got {type_name(value)}")
                if parse_dates(_series([value]), self.pre.date_formats_[name]).isna().iloc[0]:
                    raise InputError(f"inputs[{i}].{name}: {preview(value)} is not a date like "
                                     f"{self.pre.example()[name]!r}; send null for a missing value")
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InputError(f"inputs[{i}].{name}: expected a string, a number or null, got {type_name(value)}")
            elif isinstance(value, float) and not math.isfinite(value):  # NaN or Infinity: no category
                spelled = "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
                raise InputError(f"inputs[{i}].{name}: expected a string, a finite number or null, got {spelled}")

    def to_source(self, rows: list[Any]):
        """Rows (objects or lists) as a DataFrame with the run's columns; null -> missing."""
        import pandas as pd

        records = [row if isinstance(row, dict) else dict(zip(self.columns, row)) for row in rows]
        data: dict[str, Any] = {}
        for c in self.numeric:
            data[c] = np.array([np.nan if r[c] is None else float(r[c]) for r in records], dtype=np.float64)
        for c in self.dates + self.categorical:
            data[c] = pd.Series([r[c] for r in records], dtype=object)
        return pd.DataFrame(data, columns=self.columns)


def _series(values: list[Any]):
    """A short object Series (pandas imported when a request needs it)."""
    import pandas as pd

    return pd.Series(values, dtype=object)

