"""Time series for forecasting: sliding windows of history → the next steps, split chronologically.

A series (a CSV with a time column, or a built-in generator) is put on a regular time grid, its
gaps are filled by linear interpolation in time or left as holes that windows must avoid, and it is
cut into samples: ``x`` the ``context`` steps of history of every input column (N, context, F),
``y`` the next ``horizon`` steps of the target columns, flattened **step-major**
(``y[:, h * T + j]`` is target ``j`` at step ``h + 1``). Train, validation and test are consecutive
stretches of time (train first); a validation or test window may take its history from before its
part, never its targets.

Built-in series (``builtin: sine_mixture | mackey_glass``) come from :mod:`layerwise.data._generators`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..core.config import DataConfig
from ..core.errors import DataError
from . import DataSource, register_source, where
from ._generators import mackey_glass, sine_mixture
from .preprocess import TargetScaler, register_preprocessor
from .spec import DataBundle, DataSpec, Split

__all__ = [
    "Series",
    "TimeSeriesConfig",
    "TimeSeriesPreprocessor",
    "TimeSeriesSource",
    "infer_season",
    "mackey_glass",
    "prepare_series",
    "sine_mixture",
    "window_starts",
]

BUILTIN_COLUMNS = {"sine_mixture": "value", "mackey_glass": "x"}
BUILTIN_TIME = "t"


class TimeSeriesConfig(DataConfig):
    source: Literal["timeseries"] = "timeseries"
    path: str | None = Field(None, description="a CSV file with a time column and value columns (or use builtin)")
    builtin: Literal["sine_mixture", "mackey_glass"] | None = Field(
        None, description="a generated series instead of a file: sine_mixture (column 'value') or mackey_glass "
                          "(column 'x'); time column 't' counts steps")
    length: int = Field(3000, ge=10, description="builtin: number of time steps generated")
    seed: int = Field(0, description="builtin: seed of the generator (same seed, same series)")
    noise: float = Field(0.1, ge=0, description="builtin sine_mixture: std of the added Gaussian noise")
    delimiter: str = Field(",", description="CSV field separator")
    time_column: str | None = Field(None, description="the column of timestamps (dates or numbers); required "
                                                      "with path")
    columns: list[str] | None = Field(None, description="value columns the model reads (default: every numeric "
                                                        "column but the time)")
    target_columns: list[str] | None = Field(None, description="columns to forecast, a subset of columns "
                                                               "(default: all of columns)")
    context: int = Field(48, ge=1, description="steps of history each forecast sees")
    horizon: int = Field(12, ge=1, description="steps ahead forecast at once")
    stride: int = Field(1, ge=1, description="steps between the starts of consecutive windows")
    missing: Literal["interpolate", "drop"] = Field(
        "interpolate", description="gaps (missing timestamps, empty values): interpolate linearly in time, or "
                                   "drop every window that touches one")
    frequency: str | None = Field(None, description="pandas offset of the time grid ('1h', 'D', 'MS'); missing "
                                                    "timestamps become gaps (default: inferred from the data)")
    season: int | None = Field(None, ge=1, description="seasonal period in steps for the seasonal-naive baseline "
                                                       "(default: from the training part's autocorrelation, at "
                                                       "most context)")
    scale: bool = Field(True, description="standardize each column with the training part's mean and std "
                                          "(data.normalize: false turns it off too)")
    relative: bool = Field(False, description="targets are the change from each window's last observed value "
                                              "(a level the training part never reached stays in reach)")

    @model_validator(mode="after")
    def _one_series(self) -> TimeSeriesConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("data: give exactly one of data.path (a CSV file) or data.builtin "
                             "(sine_mixture, mackey_glass)")
        if self.path is not None and self.time_column is None:
            raise ValueError("data.time_column: required with data.path; name the column holding the timestamps")
        if self.season is not None and self.season > self.context:
            raise ValueError(f"data.season: {self.season} is longer than data.context ({self.context}); the "
                             f"seasonal-naive baseline reads one season back from the context, so raise context")
        return self


def _builtin_frame(cfg: TimeSeriesConfig):
    import pandas as pd

    if cfg.builtin == "sine_mixture":
        values = sine_mixture(cfg.length, cfg.seed, cfg.noise)
    else:
        values = mackey_glass(cfg.length, cfg.seed)
    return pd.DataFrame({BUILTIN_TIME: np.arange(cfg.length), BUILTIN_COLUMNS[cfg.builtin]: values})


# -- from a frame to a regular series -----------------------------------------------------------


class Series:
    """A series on a regular grid: ``times`` (pandas DatetimeIndex or float array), ``values``
    (steps, columns) float64 with NaN where a gap is left, and how the grid steps."""

    def __init__(self, times, values: np.ndarray, columns: list[str], frequency: str | None, step: float | None):
        self.times, self.values, self.columns = times, values, columns
        self.frequency, self.step = frequency, step  # datetime grid: pandas offset; numeric grid: step size

    def __len__(self) -> int:
        return len(self.values)

    def future(self, count: int):
        """The ``count`` timestamps after the last one, continuing the grid."""
        import pandas as pd

        last = self.times[-1]
        if self.frequency is not None:
            return pd.date_range(last, periods=count + 1, freq=self.frequency)[1:]
        future = last + self.step * np.arange(1, count + 1)
        whole = float(last).is_integer() and float(self.step).is_integer()
        return future.astype(np.int64) if whole else future  # step numbers stay integers


def _parse_times(frame, time_column: str, origin: str):
    """Timestamps as a DatetimeIndex, or as floats when the column holds plain numbers."""
    import pandas as pd

    if time_column not in frame.columns:
        cols = list(frame.columns)
        raise DataError(f"data.time_column: column '{time_column}' not found in {origin}; the columns are: "
                        f"{', '.join(map(str, cols[:20]))}{'...' if len(cols) > 20 else ''}; set data.time_column")
    column = frame[time_column]
    if column.isna().any():
        row = int(np.argmax(column.isna().to_numpy()))
        raise DataError(f"{origin}: time column '{time_column}' is empty at row {row}; give every row a timestamp")
    if column.dtype.kind in "iuf":
        return column.to_numpy(dtype=np.float64)
    try:
        times = pd.to_datetime(column, errors="raise", format="mixed")
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(column, errors="coerce", format="mixed")
        bad = int(np.argmax(parsed.isna().to_numpy())) if parsed.isna().any() else 0
        raise DataError(f"{origin}: time column '{time_column}' cannot be parsed as dates (row {bad}: "
                        f"{column.iloc[bad]!r}); use ISO dates like 2024-01-31 or plain numbers") from None
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert(None)
    return pd.DatetimeIndex(times)


def _check_order(times, time_column: str, origin: str) -> None:
    values = np.asarray(times.asi8 if hasattr(times, "asi8") else times)
    diffs = np.diff(values)
    if (diffs < 0).any():
        i = int(np.argmax(diffs < 0)) + 1
        raise DataError(f"{origin}: time column '{time_column}' is not in increasing order: row {i} ({times[i]}) "
                        f"is earlier than row {i - 1} ({times[i - 1]}); sort the file by time")
    if (diffs == 0).any():
        i = int(np.argmax(diffs == 0)) + 1
        raise DataError(f"{origin}: time column '{time_column}' has duplicate timestamps: rows {i - 1} and {i} are "
                        f"both {times[i]}; aggregate or drop the duplicates")


def _numeric_columns(frame, names: list[str], origin: str, key: str) -> np.ndarray:
    import pandas as pd

    out = np.empty((len(frame), len(names)))
    for j, name in enumerate(names):
        if name not in frame.columns:
            cols = list(map(str, frame.columns))
            raise DataError(f"{key}: column '{name}' not found in {origin}; the columns are: {', '.join(cols[:20])}"
                            f"{'...' if len(cols) > 20 else ''}")
        column = frame[name]
        if column.dtype.kind not in "iufb":
            parsed = pd.to_numeric(column, errors="coerce")
            bad = parsed.isna() & column.notna() & (column.astype(str).str.strip() != "")
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise DataError(f"{origin}: value column '{name}' is not numeric (row {row}: {column.iloc[row]!r}); "
                                f"fix the value, or leave it out of {key}")
            column = parsed
        out[:, j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(out[:, j]).all():
            raise DataError(f"{origin}: value column '{name}' has no values at all (every row is empty); "
                            f"drop it from {key}")
    return out


def _regular_grid(times, values: np.ndarray, frequency: str | None, origin: str, time_column: str):
    """Reindex onto a regular grid: (grid times, values with NaN rows for missing stamps, freq, step)."""
    import pandas as pd

    if not isinstance(times, pd.DatetimeIndex):  # plain numbers: the grid step is the median difference
        if frequency is not None:
            raise DataError(f"data.frequency: '{frequency}' needs dates in '{time_column}', but {origin} has plain "
                            f"numbers; remove data.frequency (the step is inferred)")
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        position = (times - times[0]) / step
        index = np.round(position).astype(np.int64)
        off = np.abs(position - index) > 1e-6
        if off.any():
            i = int(np.argmax(off))
            raise DataError(f"{origin}: time {times[i]} at row {i} is not on the regular grid of step {step:g} "
                            f"starting at {times[0]:g}; resample the series to a regular step")
        grid = times[0] + step * np.arange(index[-1] + 1)
        full = np.full((len(grid), values.shape[1]), np.nan)
        full[index] = values
        return grid, full, None, step
    if frequency is None:
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
            warnings.simplefilter("ignore")
            frequency = pd.infer_freq(times) if len(times) >= 3 else None
        frequency = getattr(frequency, "freqstr", frequency)
        if frequency is None:  # gaps (or too few stamps): the typical spacing
            frequency = pd.tseries.frequencies.to_offset(pd.Series(times).diff().median()).freqstr
    try:
        grid = pd.date_range(times[0], times[-1], freq=frequency)
    except ValueError:
        raise DataError(f"data.frequency: '{frequency}' is not a pandas offset; use e.g. '1h', 'D', 'W', "
                        f"'MS'") from None
    if len(grid) > 50 * max(len(times), 1):
        raise DataError(f"data.frequency: '{frequency}' makes {len(grid)} steps for {len(times)} rows of "
                        f"{origin}; pick the series' own spacing")
    position = grid.get_indexer(times)
    if (position < 0).any():
        i = int(np.argmax(position < 0))
        raise DataError(f"{origin}: timestamp {times[i]} at row {i} is not on the '{frequency}' grid starting at "
                        f"{times[0]}; set data.frequency to the series' spacing, or resample it")
    full = np.full((len(grid), values.shape[1]), np.nan)
    full[position] = values
    return grid, full, pd.tseries.frequencies.to_offset(frequency).freqstr, None


def fill_gaps(series: Series) -> Series:
    """Linear interpolation in time inside the series; the edges take the nearest value."""
    import pandas as pd

    index = series.times if series.frequency is not None else pd.Index(series.times)
    frame = pd.DataFrame(series.values, index=index)
    frame = frame.interpolate(method="time" if series.frequency is not None else "index").ffill().bfill()
    return Series(series.times, frame.to_numpy(dtype=np.float64), series.columns, series.frequency, series.step)


def prepare_series(frame, time_column: str, columns: list[str], frequency: str | None, origin: str,
                   key: str = "data.columns") -> Series:
    """Parse, check and regularize a frame: ordered unique timestamps, numeric columns, gaps as NaN."""
    times = _parse_times(frame, time_column, origin)
    _check_order(times, time_column, origin)
    values = _numeric_columns(frame, columns, origin, key)
    grid, full, freq, step = _regular_grid(times, values, frequency, origin, time_column)
    return Series(grid, full, columns, freq, step)


def window_starts(valid: np.ndarray, lo: int, hi: int, context: int, horizon: int, stride: int) -> np.ndarray:
    """Starts ``s`` of windows whose targets lie in [lo, hi) and whose every step is ``valid``.

    A window covers [s, s + context + horizon); its targets [s + context, s + context + horizon).
    """
    span = context + horizon
    first, last = max(lo - context, 0), hi - span  # targets start at or after lo, end by hi
    if last < first:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(first, last + 1, stride)
    bad = np.concatenate([[0], np.cumsum(~valid)])  # prefix count of invalid steps
    ok = bad[starts + span] - bad[starts] == 0
    return starts[ok]


def infer_season(values: np.ndarray, max_lag: int) -> int:
    """The seasonal period, in steps, from ``values`` (steps, columns).

    The autocorrelation of each column after removing its least-squares linear trend (a trend would
    otherwise make every lag look alike), averaged over columns; the season is the shortest lag at a
    local peak above 0.1 and within 90% of the highest peak; 1 (plain naive) when no lag stands out.
    """
    values = values[np.isfinite(values).all(axis=1)]
    max_lag = min(max_lag, len(values) // 2)
    if max_lag < 2:
        return 1
    t = np.arange(len(values), dtype=np.float64)
    design = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    resid = values - design @ coef
    denom = (resid ** 2).sum(axis=0)
    denom = np.where(denom > 0, denom, 1.0)
    acf = np.array([((resid[k:] * resid[:-k]).sum(axis=0) / denom).mean() for k in range(1, max_lag + 2)])
    peaks = [lag for lag in range(2, max_lag + 1)
             if acf[lag - 1] > acf[lag - 2] and acf[lag - 1] >= acf[lag] and acf[lag - 1] > 0.1]
    if not peaks:
        return 1
    best = max(acf[lag - 1] for lag in peaks)
    # the shortest period nearly as strong as the best: 12 rather than its multiple 24
    return min(lag for lag in peaks if acf[lag - 1] >= 0.9 * best)


# -- the preprocessor saved with a run ------------------------------------------------------------


@register_preprocessor("timeseries")
class TimeSeriesPreprocessor:
    """What a forecasting run needs to turn recent history into a model input, and back."""

    def __init__(self, time_column: str, columns: list[str], target_columns: list[str], context: int, horizon: int,
                 frequency: str | None, step: float | None, mean: list[float], std: list[float], season: int,
                 missing: str = "interpolate", time_kind: str = "datetime", relative: bool = False):
        self.time_column, self.columns, self.target_columns = time_column, columns, target_columns
        self.context, self.horizon = context, horizon
        self.frequency, self.step, self.time_kind = frequency, step, time_kind
        self.mean, self.std = mean, std
        self.season, self.missing = season, missing
        self.relative = relative  # targets are changes from the window's last value

    @property
    def target_index(self) -> list[int]:
        """Positions of the target columns among the input columns."""
        return [self.columns.index(c) for c in self.target_columns]

    def scale(self, values: np.ndarray) -> np.ndarray:
        return (values - np.asarray(self.mean)) / np.asarray(self.std)

    def unscale_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled inputs (B, T, F) → the target columns on the original scale (B, T, targets)."""
        idx = self.target_index
        mean = torch.tensor([self.mean[i] for i in idx], dtype=x.dtype, device=x.device)
        std = torch.tensor([self.std[i] for i in idx], dtype=x.dtype, device=x.device)
        return x[..., idx] * std + mean

    def to_original(self, outputs: torch.Tensor, x: torch.Tensor, scaler) -> torch.Tensor:
        """Model outputs or stored targets (B, horizon * T) → values on the original scale (B, horizon, T).

        ``scaler`` is the run's target scaler; with ``relative`` targets it gives changes, and the
        window's last observed value (from its inputs ``x``) is added back.
        """
        values = scaler.inverse(outputs.reshape(outputs.shape[0], -1).to(x.dtype))
        values = values.view(outputs.shape[0], self.horizon, len(self.target_columns))
        if self.relative:
            values = values + self.unscale_targets(x[:, -1:, :])
        return values

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        return x  # windows are stored scaled

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "timeseries", "time_column": self.time_column, "columns": self.columns,
                "target_columns": self.target_columns, "context": self.context, "horizon": self.horizon,
                "frequency": self.frequency, "step": self.step, "time_kind": self.time_kind, "mean": self.mean,
                "std": self.std, "season": self.season, "missing": self.missing, "relative": self.relative}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeSeriesPreprocessor:
        return cls(data["time_column"], data["columns"], data["target_columns"], data["context"], data["horizon"],
                   data["frequency"], data["step"], data["mean"], data["std"], data["season"], data["missing"],
                   data["time_kind"], data.get("relative", False))


# -- the source ----------------------------------------------------------------------------------


def _frame_and_columns(cfg: TimeSeriesConfig):
    """The raw frame, its origin for messages, the time column, input and target columns."""
    if cfg.builtin is not None:
        frame, origin, time_column = _builtin_frame(cfg), f"builtin:{cfg.builtin}", BUILTIN_TIME
    else:
        from .tabular import read_table

        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path: file not found: {where(path)}; check the path")
        frame, origin, time_column = read_table(path, cfg.delimiter), str(path), cfg.time_column
        if time_column not in frame.columns:
            _parse_times(frame, time_column, origin)  # raises, naming the columns found
    columns = cfg.columns
    if columns is None:
        columns = [c for c in frame.columns if c != time_column and frame[c].dtype.kind in "iuf"]
        if not columns:
            raise DataError(f"{origin}: no numeric value column besides '{time_column}'; list the value columns in "
                            f"data.columns")
    if time_column in columns:
        raise DataError(f"data.columns: '{time_column}' is the time column; list only value columns")
    targets = cfg.target_columns or list(columns)
    for name in targets:
        if name not in columns:
            raise DataError(f"data.target_columns: '{name}' is not among the input columns ({', '.join(columns)}); "
                            f"add it to data.columns (the baselines read the target's own history)")
    return frame, origin, time_column, list(columns), list(targets)


@register_source("timeseries")
class TimeSeriesSource(DataSource):
    """A time series cut into (context → horizon) windows, split chronologically."""

    Config = TimeSeriesConfig
    description = "a time series (CSV with a time column, or sine_mixture / mackey_glass) for forecasting"
    implies_task = "forecasting"

    def load(self, cfg: TimeSeriesConfig, task: str | None) -> DataBundle:
        if cfg.augment is not None:
            raise DataError("data.augment: augmentation applies to image data only; remove it for a time series")
        frame, origin, time_column, columns, targets = _frame_and_columns(cfg)
        series = prepare_series(frame, time_column, columns, cfg.frequency, origin)
        gaps = ~np.isfinite(series.values).all(axis=1)
        if cfg.missing == "interpolate" and gaps.any():
            series = fill_gaps(series)
        valid = np.isfinite(series.values).all(axis=1)

        n = len(series)
        n_test = round(n * cfg.test_fraction)
        n_val = round(n * cfg.val_fraction)
        a, b = n - n_val - n_test, n - n_test  # train [0, a), val [a, b), test [b, n)
        span = cfg.context + cfg.horizon
        if a < span:
            raise DataError(f"{origin}: the train part has {a} steps but needs at least context + horizon = {span}; "
                            f"give a longer series or lower data.context/data.horizon/val_fraction/test_fraction")
        for name, size in (("val", n_val), ("test", n_test)):
            if 0 < size < cfg.horizon:
                raise DataError(f"{origin}: the {name} part has {size} steps but needs at least horizon = "
                                f"{cfg.horizon} (its history comes from before it); raise data.{name}_fraction or "
                                f"lower data.horizon")

        train_values = series.values[:a]
        scaling = cfg.scale and cfg.normalize
        mean = np.nanmean(train_values, axis=0) if scaling else np.zeros(len(columns))
        std = np.nanstd(train_values, axis=0) if scaling else np.ones(len(columns))
        std = np.where(std > 1e-12, std, 1.0)
        target_idx = [columns.index(c) for c in targets]
        if cfg.season is not None:
            season = cfg.season
        else:
            season = infer_season(fill_gaps(Series(series.times[:a], train_values, columns, series.frequency,
                                                   series.step)).values[:, target_idx], cfg.context)

        time_kind = "datetime" if series.frequency is not None else "numeric"
        pre = TimeSeriesPreprocessor(time_column, columns, targets, cfg.context, cfg.horizon, series.frequency,
                                     series.step, mean.tolist(), std.tolist(), int(season), cfg.missing, time_kind,
                                     cfg.relative)
        scaled = pre.scale(series.values).astype(np.float32)
        # the target columns' statistics repeated per step (step-major); relative targets are changes: no mean
        target_mean = np.zeros(len(targets)) if cfg.relative else mean[target_idx]
        scaler = TargetScaler(np.tile(target_mean, cfg.horizon).tolist(),
                              np.tile(std[target_idx], cfg.horizon).tolist())

        def make(lo: int, hi: int, name: str, limit: int | None = None) -> Split | None:
            if hi <= lo:
                return None
            starts = window_starts(valid, lo, hi, cfg.context, cfg.horizon, cfg.stride)
            if limit:
                starts = starts[:limit]
            if len(starts) == 0:
                raise DataError(f"{origin}: the {name} part has no window of {span} steps without a gap "
                                f"(data.missing: drop); use data.missing: interpolate or a shorter context/horizon")
            x_idx = starts[:, None] + np.arange(cfg.context)  # (N, context)
            y_idx = starts[:, None] + cfg.context + np.arange(cfg.horizon)  # (N, horizon)
            x = scaled[x_idx]  # (N, context, F)
            y = scaled[y_idx][:, :, target_idx]  # (N, horizon, T)
            if cfg.relative:
                y = y - x[:, -1:, target_idx]
            y = y.reshape(len(starts), -1)  # step-major (N, horizon * T)
            return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))

        from .preprocess import Preprocessing

        spec = DataSpec(kind="sequence", input_shape=(cfg.context, len(columns)), target="numeric",
                        num_targets=cfg.horizon * len(targets),
                        target_names=[f"{c}@t+{h + 1}" for h in range(cfg.horizon) for c in targets],
                        feature_names=list(columns))
        return DataBundle(spec, make(0, a, "train", cfg.limit), make(a, b, "val"), make(b, n, "test"),
                          Preprocessing(pre, "numeric", None, scaler))
