"""CSV and Parquet tables: a target column, numeric and categorical feature columns."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..core.config import DataConfig
from ..core.errors import DataError
from ..core.registry import did_you_mean
from . import DataSource, register_source, where
from .preprocess.tabular import EMBEDDING_MAX_LEVELS, ONEHOT_MAX_LEVELS, ROWS_PER_LEVEL
from .spec import RawData

COMPRESSED_SUFFIXES = {".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"}  # pandas decompresses these itself


class TableConfig(DataConfig):
    path: str = Field(..., description="the table file")
    target: str | list[str] = Field(..., description="target column (several for multi-output regression)")
    features: list[str] | None = Field(None, description="feature columns to use (default: all but the target)")
    drop: list[str] = Field(default_factory=list, description="columns to ignore, e.g. ids")
    categorical_columns: list[str] | None = Field(None, description="force these columns to be categorical")
    categorical_encoding: Literal["auto", "onehot", "embedding", "frequency"] = Field(
        "auto", description="auto: one-hot up to onehot_max_levels levels, an embedding up to embedding_max_levels, "
                            "a frequency code beyond (identifiers are refused); onehot, embedding or frequency: every "
                            "categorical column"
    )
    onehot_max_levels: int = Field(ONEHOT_MAX_LEVELS, ge=1, description="categorical_encoding auto: one-hot encode "
                                   "a column of up to this many levels")
    embedding_max_levels: int = Field(EMBEDDING_MAX_LEVELS, ge=1, description="categorical_encoding auto: embed a "
                                      f"column of up to this many levels (with at least {ROWS_PER_LEVEL} training rows "
                                      f"per level), frequency-encode beyond")
    scaling: Literal["auto", "standard", "robust", "quantile", "none"] = Field(
        "auto", description="numeric columns: robust (median and IQR, outliers smoothly clipped into ±3, as RealMLP), "
                            "quantile (to a normal distribution), standard (mean and std) or none; auto: robust, and "
                            "standard for a column of two values"
    )
    missing_indicators: Literal["auto"] | bool = Field(
        "auto", description="a 0/1 column '<col>=<missing>' next to each numeric or date column; auto: for the "
                            "columns with missing values in the training split"
    )
    impute: Literal["mean", "median"] = Field("mean", description="fill for missing numeric values")
    date_columns: list[str] = Field(default_factory=list, description="text columns to read as dates (text "
                                    "columns whose values are 90% dates are found without it); each becomes year, "
                                    "month, day, day of week, day of year (and hour, minute) features")
    target_transform: Literal["auto", "standard", "log", "none"] = Field(
        "auto", description="regression targets: log (log1p, then standardised; targets must be >= 0), standard, "
                            "or none; auto: log for a non-negative target of skewness above 2, else standard. "
                            "Predictions and metrics are in the target's units"
    )

    @model_validator(mode="after")
    def _some_target(self) -> TableConfig:
        if not self.target:
            raise ValueError(f"data.target: name the target column (or a list of columns); received {self.target!r}")
        both = sorted(set(self.date_columns) & set(self.categorical_columns or []))
        if both:
            raise ValueError(f"data.date_columns: column '{both[0]}' is also in data.categorical_columns; list it in "
                             f"one of them")
        return self


class CsvConfig(TableConfig):
    source: Literal["csv"] = "csv"
    delimiter: str = Field(",", description="field separator")


class ParquetConfig(TableConfig):
    source: Literal["parquet"] = "parquet"


def read_table(path: Path, delimiter: str = ","):
    """Read a CSV or Parquet file into a DataFrame, with one-line errors (a ``.tsv`` file is
    tab-separated whatever ``delimiter`` says)."""
    import pandas as pd

    if path.is_dir():
        raise DataError(f"data.path: {path} is a folder; point it at the table file")
    if not path.is_file():
        raise DataError(f"data.path: file not found: {where(path)}; check the path")
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".pq", *COMPRESSED_SUFFIXES}:
        with open(path, "rb") as fh:
            if b"\0" in fh.read(4096):  # text tables hold no NUL bytes; xlsx, npz, images... do
                raise DataError(f"{path}: not a text table (it holds NUL bytes: a binary file, or UTF-16 text); "
                                f"export it as UTF-8 CSV, or save it as .parquet and set data.source: parquet")
    try:
        if suffix in {".parquet", ".pq"}:
            from ..core.errors import require

            require("pyarrow", "parquet")
            frame = pd.read_parquet(path)
            header = list(frame.columns)
        else:
            sep = "\t" if suffix == ".tsv" else delimiter
            frame = pd.read_csv(path, sep=sep)
            # pandas renames a repeated column 'a' to 'a.1': read the header as written to catch it
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, na_filter=False).iloc[0].tolist()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (it holds byte 0x{exc.object[exc.start]:02x}, which UTF-8 cannot "
                        f"decode); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot be read as a table ({first}); check the file format") from None
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    names = [str(c).strip() for c in header]
    repeated = [n for n in dict.fromkeys(names) if n and names.count(n) > 1]
    if repeated:
        raise DataError(f"{path}: column '{repeated[0]}' appears {names.count(repeated[0])} times in the header; "
                        f"give each column a name of its own")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def select_columns(frame, cfg: TableConfig, origin: str):
    """Split a frame into features and target by the config, naming any missing column."""
    targets = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target)
    columns = list(frame.columns)
    for key, names in (("data.target", targets), ("data.features", cfg.features or []), ("data.drop", cfg.drop),
                       ("data.categorical_columns", cfg.categorical_columns or []),
                       ("data.date_columns", cfg.date_columns)):
        for name in names:
            if name not in columns:
                raise DataError(f"{key}: column '{name}' not found in {origin}{did_you_mean(name, columns)}; "
                                f"columns are: {', '.join(columns[:20])}{'...' if len(columns) > 20 else ''}")
    features = cfg.features or [c for c in columns if c not in targets and c not in cfg.drop]
    overlap = set(features) & set(targets)
    if overlap:
        raise DataError(f"data.features: the target column '{sorted(overlap)[0]}' cannot also be a feature")
    y = frame[targets[0]].to_numpy() if len(targets) == 1 else frame[targets].to_numpy()
    return frame[features].reset_index(drop=True), y, targets


class _TableSource(DataSource):
    def read(self, cfg: TableConfig, task: str | None) -> RawData:
        path = Path(cfg.path).expanduser()
        frame = read_table(path, getattr(cfg, "delimiter", ","))
        x, y, targets = select_columns(frame, cfg, str(path))
        target = "numeric" if len(targets) > 1 else None
        return RawData("tabular", x, y, target=target, target_names=targets, origin=str(path))


@register_source("csv")
class CsvSource(_TableSource):
    Config = CsvConfig
    description = "a CSV file with a target column; numeric and text columns"


@register_source("parquet")
class ParquetSource(_TableSource):
    Config = ParquetConfig
    description = "a Parquet file with a target column (needs pyarrow)"
