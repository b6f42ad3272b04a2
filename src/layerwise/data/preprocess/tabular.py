"""Tables: impute, scale and encode a DataFrame's columns into one (N, F) float32 matrix.

Columns come in three sorts (decided by :mod:`layerwise.data.kinds.tabular`):

* **numeric**: missing values are filled with the training mean (or median) of the raw column, then
  scaled (:mod:`.scaling`: ``robust`` by default, ``standard`` for a column of two values, ``quantile``,
  ``none``). A column with missing values in training also gets a 0/1 indicator ``<col>=<missing>``
  right after it, so "missing" stays visible to the model after imputation.
* **dates** (text parsed as dates): expanded into numeric parts (``signup:year``, ``:month``,
  ``:day``, ``:dayofweek``, ``:dayofyear``; ``:hour`` and ``:minute`` when any value has a time of
  day), each imputed and scaled like a numeric column, plus one indicator for the column.
* **categorical**: by cardinality (``categorical_encoding: auto``) one-hot up to ``onehot_max_levels``
  levels, an embedding index up to ``embedding_max_levels`` (while there are enough rows per level),
  beyond that a target-free frequency code: ``log1p(count) / log1p(rows)`` of the level in the
  training split, in [0, 1]. Missing values are a level of their own (``<missing>``) when the training
  split has any. Unseen levels go to one extra "unknown" level: the ``<other>`` one-hot column, the
  last embedding index, a frequency of 0. A text column with a distinct value in nearly every row
  identifies rows and is refused.

The (F,) vector is laid out column by column in that order (numeric, dates, categorical);
:attr:`TabularPreprocessor.layout` says where each column's features sit. Runs saved before scalings,
indicators, dates and frequency codes existed load with the old behaviour: standardised numbers,
missing categories in the unknown level.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ...core.errors import DataError
from . import register_preprocessor
from .columns import DATE_PARTS, TIME_PARTS, date_format, numeric_or_junk, numeric_target, parse_dates
from .scaling import fit_scaling, scale, unscale

__all__ = ["TabularPreprocessor", "Block", "numeric_or_junk", "numeric_target", "MISSING", "OTHER"]

# the zero-config choices, one constant each (the tabular benchmark tunes them)
AUTO_SCALING = "robust"  # scaling: auto, for a column of more than FEW_VALUES distinct values
FEW_VALUES = 2  # scaling: auto standardises a column of this many distinct values or fewer (0/1 flags)
# categorical_encoding: auto one-hot encodes up to this many levels: one-hot into the first Linear layer
# *is* an embedding as wide as that layer, and a separate narrow embedding of a 51- or 68-level column
# (US states, ZIP codes) lost 3 to 7 points on the suite's churn and sacramento tables ...
ONEHOT_MAX_LEVELS = 100
EMBEDDING_MAX_LEVELS = 1000  # ... embeds up to this many, and frequency-encodes beyond
ROWS_PER_LEVEL = 5  # ... and frequency-encodes when an embedding would see fewer rows per level on average
MAX_ONEHOT_LEVELS = 200  # categorical_encoding: onehot refuses more levels (a block that would dwarf the rest)
IDENTIFIER_MIN_LEVELS = 10  # ... a column of this many levels or fewer is never taken for one (a tiny table)
IDENTIFIER_SHARE = 0.9  # a text column with a distinct value in 90% of its rows identifies rows, it describes nothing
MISSING = "<missing>"  # the level of missing values (and the name of a missing indicator)
OTHER = "<other>"  # the one-hot column of unseen levels


class Block(NamedTuple):
    """Where one input column sits in the (F,) vector: features ``start`` to ``start + width``."""

    column: str
    encoding: str  # numeric | date | onehot | embedding | frequency
    start: int
    width: int


@register_preprocessor("tabular")
class TabularPreprocessor:
    """Impute, scale and encode a DataFrame's numeric, date and categorical columns.

    Fitted state ends in ``_``; scalar features (a numeric column, or a date part ``col:year``)
    have ``fill_``, ``mean_`` / ``std_`` (the scaling's center and scale), ``scaling_`` and, for
    quantile scaling, ``quantiles_``.
    """

    def __init__(self, numeric: list[str], categorical: list[str], encoding: str = "auto",
                 impute: str = "mean", normalize: bool = True, origin: str = "data", *,
                 scaling: str = "auto", missing_indicators: str | bool = "auto", dates: list[str] | None = None,
                 onehot_max_levels: int = ONEHOT_MAX_LEVELS, embedding_max_levels: int = EMBEDDING_MAX_LEVELS):
        self.numeric = numeric
        self.categorical = categorical
        self.dates = list(dates or [])
        self.encoding = encoding
        self.impute = impute
        self.normalize = normalize
        self.origin = origin
        self.scaling = scaling
        self.missing_indicators = missing_indicators
        self.onehot_max_levels = onehot_max_levels
        self.embedding_max_levels = embedding_max_levels
        self.fill_: dict[str, float] = {}
        self.mean_: dict[str, float] = {}
        self.std_: dict[str, float] = {}
        self.scaling_: dict[str, str] = {}  # per scalar feature: standard | robust | quantile | none
        self.quantiles_: dict[str, list[float]] = {}
        self.indicators_: list[str] = []  # numeric and date columns followed by a missing indicator
        self.date_formats_: dict[str, str] = {}
        self.date_parts_: dict[str, list[str]] = {}
        self.levels_: dict[str, list[str]] = {}  # sorted training levels, then MISSING when any was missing
        self.encodings_: dict[str, str] = {}  # per categorical column: onehot | embedding | frequency
        self.frequency_: dict[str, list[float]] = {}  # frequency-encoded columns: the code of each level
        # numeric columns holding only whole numbers, with their training range: generated rows
        # (layerwise.tools.generate) come back as integers within it, like the original column
        self.integer_: dict[str, list[float]] = {}

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, frame) -> "TabularPreprocessor":
        for col in self.numeric:
            values = self._numeric(frame, col)
            self._fit_scalar(col, col, values)
            finite = values[np.isfinite(values)]
            if np.all(finite == np.round(finite)):
                self.integer_[col] = [float(finite.min()), float(finite.max())]
            self._fit_indicator(col, ~np.isfinite(values))
        for col in self.dates:
            self.date_formats_[col] = date_format(frame[col], mixed=True)[0] or "mixed"
            stamps = self._stamps(frame, col)
            present = stamps.dropna()
            # the hour when any value has a time of day, the minute when any has minutes: never a constant part
            seconds = (present.dt.hour * 3600 + present.dt.minute * 60 + present.dt.second).to_numpy()
            timed = [part for part, unit in zip(TIME_PARTS, (86400, 3600)) if (seconds % unit > 0).any()]
            self.date_parts_[col] = list(DATE_PARTS) + timed
            for part in self.date_parts_[col]:
                self._fit_scalar(f"{col}:{part}", col, _part(stamps, part))
            self._fit_indicator(col, stamps.isna().to_numpy())
        for col in self.categorical:
            text, missing = _text(frame[col])
            levels, counts = np.unique(text[~missing], return_counts=True)
            self.levels_[col] = [str(level) for level in levels] + ([MISSING] if missing.any() else [])
            self.encodings_[col] = self._encoding_for(col, len(levels), int((~missing).sum()))
            if self.encodings_[col] == "frequency":
                counts = np.append(counts, missing.sum()) if missing.any() else counts
                self.frequency_[col] = (np.log1p(counts) / np.log1p(len(text))).tolist()
        return self

    def _fit_scalar(self, name: str, column: str, values: np.ndarray) -> None:
        """Fill and scaling of one scalar feature ``name`` (of input ``column``) from raw training values."""
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise DataError(f"{self.origin}: column '{column}' has no values in the training split; drop it from "
                            f"data.features (or add it to data.drop)")
        fill = float(np.median(finite) if self.impute == "median" else finite.mean())
        self.fill_[name] = fill
        if not self.normalize or self.scaling == "none":
            how = "none"
        elif self.scaling != "auto":
            how = self.scaling
        else:
            how = "standard" if len(np.unique(finite)) <= FEW_VALUES else AUTO_SCALING
        # fitted on the imputed column: the values the model will see
        center, spread, quantiles = fit_scaling(np.where(np.isfinite(values), values, fill), how)
        self.scaling_[name], self.mean_[name], self.std_[name] = how, center, spread
        if quantiles is not None:
            self.quantiles_[name] = quantiles

    def _fit_indicator(self, col: str, missing: np.ndarray) -> None:
        wanted = self.missing_indicators
        if wanted is True or wanted == "true" or (wanted == "auto" and missing.any()):
            self.indicators_.append(col)

    def _encoding_for(self, col: str, levels: int, rows: int) -> str:
        """One-hot for a few levels, an embedding for many, a frequency code for very many (``auto``);
        an identifier is refused."""
        if self.encoding in ("embedding", "frequency"):
            return self.encoding
        if self.encoding == "onehot":
            if levels > max(MAX_ONEHOT_LEVELS, self.onehot_max_levels):
                raise DataError(
                    f"{self.origin}: column '{col}' has {levels} distinct text values, too many to one-hot encode; "
                    f"add it to data.drop if it is an identifier, or set data.categorical_encoding: auto (or embedding)")
            return "onehot"
        if levels > IDENTIFIER_MIN_LEVELS and levels >= IDENTIFIER_SHARE * rows:
            raise DataError(
                f"{self.origin}: column '{col}' looks like an identifier ({levels} distinct values in {rows} rows): "
                f"nothing learnt from it carries over to new rows; add it to data.drop, or set "
                f"data.categorical_encoding: embedding to embed it anyway")
        if levels <= self.onehot_max_levels:
            return "onehot"
        if levels > self.embedding_max_levels or levels * ROWS_PER_LEVEL > rows:
            return "frequency"
        return "embedding"

    def encoding_of(self, col: str) -> str:
        """How the categorical column ``col`` is encoded: ``onehot``, ``embedding`` or ``frequency``."""
        return self.encodings_[col]

    # -- reading columns --------------------------------------------------------------------------
    def _numeric(self, frame, col: str, origin: str | None = None) -> np.ndarray:
        import pandas as pd

        origin = origin or self.origin
        if col not in frame.columns:
            raise DataError(f"{origin}: column '{col}' is missing; the model was trained with it")
        column = frame[col]
        if column.dtype == object or str(column.dtype).startswith(("string", "str")):
            parsed = numeric_or_junk(column, col, origin)
            if parsed is None:
                raise DataError(f"{origin}: column '{col}' should be numeric but holds text; fix its values")
            column = pd.to_numeric(column, errors="coerce")
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = np.isinf(values)
        if infinite.any():
            first = int(np.argmax(infinite))
            raise DataError(f"{origin}: column '{col}' has {int(infinite.sum())} infinite value(s) (first: {values[first]} "
                            f"at row {frame.index[first]}); replace them with finite numbers, or leave the cells empty "
                            f"to impute them")
        return values

    def _stamps(self, frame, col: str, origin: str | None = None):
        if col not in frame.columns:
            raise DataError(f"{origin or self.origin}: column '{col}' is missing; the model was trained with it")
        return parse_dates(frame[col], self.date_formats_[col])

    def _scaled(self, name: str, values: np.ndarray) -> np.ndarray:
        """Raw values of scalar feature ``name`` (missing as NaN) -> imputed and scaled."""
        values = np.where(np.isfinite(values), values, self.fill_[name])
        return scale(values, self.scaling_.get(name, "standard"), self.mean_[name], self.std_[name],
                     self.quantiles_.get(name))

    def inverse_numeric(self, name: str, values: np.ndarray) -> np.ndarray:
        """Scaled values of scalar feature ``name`` (a numeric column, or a date part ``col:year``) back in
        the column's units: the inverse of the scaling (imputation cannot be undone)."""
        return unscale(values, self.scaling_.get(name, "standard"), self.mean_[name], self.std_[name],
                       self.quantiles_.get(name))

    def scale_value(self, name: str, value: float) -> float:
        """One raw value of a numeric column as the model reads it (before the cast to float32)."""
        return float(self._scaled(name, np.array([value], dtype=np.float64))[0])

    def _codes(self, frame, col: str, origin: str) -> np.ndarray:
        """Level index per row (N,): missing -> the MISSING level when fitted, unseen -> len(levels)."""
        import pandas as pd

        if col not in frame.columns:
            raise DataError(f"{origin}: column '{col}' is missing; the model was trained with it")
        levels = self.levels_[col]
        text, missing = _text(frame[col])
        codes = pd.Index(levels).get_indexer(text)
        codes[codes < 0] = len(levels)  # unseen: the unknown level
        codes[missing] = levels.index(MISSING) if MISSING in levels else len(levels)
        return codes

    # -- the encoded layout -----------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """The input columns, in the order their features are laid out."""
        return list(self.numeric) + list(self.dates) + list(self.categorical)

    @property
    def layout(self) -> list[Block]:
        """Where each input column's features sit in the (F,) vector, column by column."""
        blocks, position = [], 0
        for col in self.columns:
            if col in self.numeric or col in self.dates:
                encoding = "numeric" if col in self.numeric else "date"
                width = (1 if col in self.numeric else len(self.date_parts_[col])) + (col in self.indicators_)
            else:
                encoding = self.encoding_of(col)
                width = len(self.levels_[col]) + 1 if encoding == "onehot" else 1  # + the unknown level
            blocks.append(Block(col, encoding, position, width))
            position += width
        return blocks

    @property
    def feature_names(self) -> list[str]:
        names = []
        for block in self.layout:
            col = block.column
            if block.encoding == "numeric":
                names.append(col)
            elif block.encoding == "date":
                names += [f"{col}:{part}" for part in self.date_parts_[col]]
            elif block.encoding == "onehot":
                names += [f"{col}={level}" for level in self.levels_[col]] + [f"{col}={OTHER}"]
            else:
                names.append(col if block.encoding == "embedding" else f"{col}:frequency")
            if col in self.indicators_:
                names.append(f"{col}={MISSING}")
        return names

    @property
    def categorical_slots(self) -> list[tuple[int, int]]:
        """(column position, cardinality incl. the unknown level) of embedding-encoded columns."""
        return [(b.start, len(self.levels_[b.column]) + 1) for b in self.layout if b.encoding == "embedding"]

    @property
    def onehot_groups(self) -> list[tuple[int, int]]:
        """(start, width) of each one-hot encoded column's block."""
        return [(b.start, b.width) for b in self.layout if b.encoding == "onehot"]

    @property
    def numeric_positions(self) -> list[int]:
        """Positions of the scalar features: scaled numbers, date parts, missing indicators, frequency codes."""
        return [b.start + i for b in self.layout if b.encoding not in ("onehot", "embedding") for i in range(b.width)]

    # -- encoding and decoding --------------------------------------------------------------------
    def transform(self, frame, origin: str | None = None) -> np.ndarray:
        """Encode a frame; ``origin`` names it in messages (default: the data fitted on)."""
        origin = origin or self.origin
        blocks = []
        for col in self.numeric:
            values = self._numeric(frame, col, origin)
            blocks.append(self._scaled(col, values)[:, None])
            if col in self.indicators_:
                blocks.append(~np.isfinite(values)[:, None])
        for col in self.dates:
            stamps = self._stamps(frame, col, origin)
            blocks += [self._scaled(f"{col}:{part}", _part(stamps, part))[:, None] for part in self.date_parts_[col]]
            if col in self.indicators_:
                blocks.append(stamps.isna().to_numpy()[:, None])
        for col in self.categorical:
            codes = self._codes(frame, col, origin)
            encoding = self.encoding_of(col)
            if encoding == "onehot":
                blocks.append(np.eye(len(self.levels_[col]) + 1, dtype=np.float32)[codes])
            elif encoding == "frequency":
                blocks.append(np.append(self.frequency_[col], 0.0)[codes][:, None])  # unseen: frequency 0
            else:
                blocks.append(codes[:, None].astype(np.float64))
        if not blocks:
            raise DataError(f"{origin}: no feature columns left; check data.features")
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def decode(self, encoded: np.ndarray) -> dict[str, Any]:
        """Encoded rows (N, F) back to column values: numbers unscaled (float64), dates as text rebuilt
        from their parts, categories as the nearest *known* level (None for the missing level).

        What generated rows and explanations show; imputation is not undone (a row is never missing)."""
        out: dict[str, Any] = {}
        for block in self.layout:
            col, cells = block.column, encoded[:, block.start:block.start + block.width].astype(np.float64)
            if block.encoding == "numeric":
                out[col] = self.inverse_numeric(col, cells[:, 0])
            elif block.encoding == "date":
                parts = {p: self.inverse_numeric(f"{col}:{p}", cells[:, i]) for i, p in enumerate(self.date_parts_[col])}
                out[col] = _rebuild_dates(parts, self.date_formats_[col])
            else:
                levels = self.levels_[col]
                if block.encoding == "onehot":  # the training set never fills <other>: the likeliest known level
                    codes = cells[:, :len(levels)].argmax(1)
                elif block.encoding == "embedding":  # codes generated as numbers: the nearest known code
                    codes = np.clip(np.rint(cells[:, 0]), 0, len(levels) - 1).astype(int)
                else:  # the level of the nearest frequency
                    codes = np.abs(cells[:, :1] - np.array(self.frequency_[col])[None]).argmin(1)
                out[col] = [None if levels[c] == MISSING else levels[c] for c in codes]
        return out

    def example(self) -> dict[str, Any]:
        """A typical row in the data's own terms: the training fill of each number and date, the first level."""
        fills = np.zeros((1, len(self.feature_names)), dtype=np.float32)
        for block in self.layout:
            names = ([block.column] if block.encoding == "numeric" else
                     [f"{block.column}:{p}" for p in self.date_parts_.get(block.column, [])])
            for i, name in enumerate(names):
                fills[0, block.start + i] = self.scale_value(name, self.fill_[name])
        row = {col: values[0] for col, values in self.decode(fills).items()}
        row.update({col: float(self.fill_[col]) for col in self.numeric})
        row.update({col: next((v for v in self.levels_[col] if v != MISSING), None) for col in self.categorical})
        return row

    # -- saving -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tabular", "numeric": self.numeric, "categorical": self.categorical, "dates": self.dates,
                "encoding": self.encoding, "impute": self.impute, "normalize": self.normalize,
                "scaling_option": self.scaling, "missing_indicators": self.missing_indicators,
                "onehot_max_levels": self.onehot_max_levels, "embedding_max_levels": self.embedding_max_levels,
                "fill": self.fill_, "mean": self.mean_, "std": self.std_, "scaling": self.scaling_,
                "quantiles": self.quantiles_, "indicators": self.indicators_, "date_formats": self.date_formats_,
                "date_parts": self.date_parts_, "levels": self.levels_, "encodings": self.encodings_,
                "frequency": self.frequency_, "integer": self.integer_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TabularPreprocessor":
        # every key read with .get is absent from runs saved before it existed; its default is the old behaviour
        pre = cls(data["numeric"], data["categorical"], data["encoding"], data["impute"], data["normalize"],
                  scaling=data.get("scaling_option", "standard"),
                  missing_indicators=data.get("missing_indicators", False), dates=data.get("dates", []),
                  onehot_max_levels=data.get("onehot_max_levels", MAX_ONEHOT_LEVELS),
                  embedding_max_levels=data.get("embedding_max_levels", EMBEDDING_MAX_LEVELS))
        pre.fill_, pre.mean_, pre.std_, pre.levels_ = data["fill"], data["mean"], data["std"], data["levels"]
        pre.scaling_ = data.get("scaling") or {name: "standard" for name in pre.mean_}
        pre.quantiles_ = data.get("quantiles", {})
        pre.indicators_ = data.get("indicators", [])
        pre.date_formats_, pre.date_parts_ = data.get("date_formats", {}), data.get("date_parts", {})
        pre.frequency_ = data.get("frequency", {})
        pre.integer_ = data.get("integer", {})
        # runs saved before per-column encodings used one encoding for every categorical column
        pre.encodings_ = data.get("encodings") or {col: data["encoding"] for col in data["categorical"]}
        return pre

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        return x  # already float and scaled when stored


def _text(column) -> tuple[np.ndarray, np.ndarray]:
    """A categorical column's values as text (``str`` of each, so 1, '1' and 1.0 stay apart as
    written) and its missing mask: (N,) object, (N,) bool."""
    missing = column.isna().to_numpy()
    return np.array([str(v) for v in column.tolist()], dtype=object), missing


def _part(stamps, part: str) -> np.ndarray:
    """One numeric part of UTC timestamps (N,), NaN where the date is missing."""
    attribute = {"dayofweek": "day_of_week", "dayofyear": "day_of_year"}.get(part, part)  # Monday = 0; 1 January = 1
    return getattr(stamps.dt, attribute).to_numpy(dtype=np.float64, na_value=np.nan)


def _rebuild_dates(parts: dict[str, np.ndarray], fmt: str) -> list[str | None]:
    """Dates from (unscaled) parts, as text in the column's own format; None where no valid date results."""
    import pandas as pd

    fields = {"year": np.clip(np.rint(parts["year"]), 1, 9999), "month": np.clip(np.rint(parts["month"]), 1, 12),
              "day": np.clip(np.rint(parts["day"]), 1, 31)}
    fields.update({p: np.clip(np.rint(parts[p]), 0, 23 if p == "hour" else 59) for p in TIME_PARTS if p in parts})
    stamps = pd.to_datetime(pd.DataFrame(fields), errors="coerce").dt.tz_localize("UTC")  # parsed dates are UTC
    spelled = "%Y-%m-%d %H:%M" if "hour" in parts else "%Y-%m-%d"
    form = spelled if fmt == "mixed" else fmt
    return [None if pd.isna(s) else s.strftime(form) for s in stamps]
