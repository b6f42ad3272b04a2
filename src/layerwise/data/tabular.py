"""CSV and Parquet tables: a target column, numeric and categorical feature columns."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.config import DataConfig
from ..core.errors import DataError
from ..core.registry import did_you_mean
from . import DataSource, register_source, where
from .spec import RawData


class TableConfig(DataConfig):
    path: str = Field(..., description="the table file")
    target: str | list[str] = Field(..., description="target column (several for multi-output regression)")
    features: list[str] | None = Field(None, description="feature columns to use (default: all but the target)")
    drop: list[str] = Field(default_factory=list, description="columns to ignore, e.g. ids")
    categorical_columns: list[str] | None = Field(None, description="force these columns to be categorical")
    categorical_encoding: Literal["auto", "onehot", "embedding"] = Field(
        "auto", description="auto: one-hot up to 50 levels, an embedding layer beyond (identifiers are refused); "
                            "onehot or embedding: every categorical column"
    )
    impute: Literal["mean", "median"] = Field("mean", description="fill for missing numeric values")


class CsvConfig(TableConfig):
    source: Literal["csv"] = "csv"
    delimiter: str = Field(",", description="field separator")


class ParquetConfig(TableConfig):
    source: Literal["parquet"] = "parquet"


def read_table(path: Path, delimiter: str = ","):
    """Read a CSV or Parquet file into a DataFrame, with one-line errors (a ``.tsv`` file is
    tab-separated whatever ``delimiter`` says)."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"data.path: file not found: {where(path)}; check the path")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            from ..core.errors import require

            require("pyarrow", "parquet")
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else delimiter)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot be read as a table ({first}); check the file format") from None
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def select_columns(frame, cfg: TableConfig, origin: str):
    """Split a frame into features and target by the config, naming any missing column."""
    targets = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target)
    columns = list(frame.columns)
    for key, names in (("data.target", targets), ("data.features", cfg.features or []), ("data.drop", cfg.drop),
                       ("data.categorical_columns", cfg.categorical_columns or [])):
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
