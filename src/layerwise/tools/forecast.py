"""Forecasting with a trained run: from the recent history in a CSV (or DataFrame) to future values.

The run's ``data.json`` holds everything needed (columns, time column, grid frequency, context,
horizon, scaling), so neither the training data nor the config's data path is read.

>>> frame = load_run("runs/sine-20260101-120000").forecast("recent.csv", horizon=24)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, DataError, RunError
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["forecast_frame", "write_forecast"]


def _preprocessor(run):
    from ..data.timeseries import TimeSeriesPreprocessor

    pre = run.preprocessing.inputs
    if not isinstance(pre, TimeSeriesPreprocessor):
        raise RunError(f"{run.path}: not a forecasting run (its data is {run.spec.kind}, task {run.config.task}); "
                       f"train with data.source: timeseries")
    return pre


def _history(run, inputs: Any):
    """The input's series on the run's grid, gaps handled as in training, and its origin."""
    import pandas as pd

    from ..data.tabular import read_table
    from ..data.timeseries import fill_gaps, prepare_series

    pre = _preprocessor(run)
    if isinstance(inputs, pd.DataFrame):
        frame, origin = inputs.reset_index(drop=True), "the input DataFrame"
    else:
        path = Path(inputs)
        if not path.is_file():
            raise DataError(f"--input: file not found: {path}; pass a CSV with columns {pre.time_column}, "
                            f"{', '.join(pre.columns)}")
        frame, origin = read_table(path), str(path)
    series = prepare_series(frame, pre.time_column, pre.columns, pre.frequency, origin, key="the run's columns")
    if pre.time_kind == "numeric" and series.step is not None and not np.isclose(series.step, pre.step):
        raise DataError(f"{origin}: time column '{pre.time_column}' steps by {series.step:g}, the run by "
                        f"{pre.step:g}; resample the input to the run's step")
    if pre.time_kind == "numeric" and series.step is None:
        raise DataError(f"{origin}: time column '{pre.time_column}' holds dates but the run was trained on "
                        f"plain numbers; give step numbers like the training data")
    if pre.time_kind == "datetime" and series.frequency is None:
        raise DataError(f"{origin}: time column '{pre.time_column}' holds plain numbers but the run was trained "
                        f"on dates; give dates like the training data")
    if len(series) < pre.context:
        raise DataError(f"{origin}: {len(series)} time steps of history, but the run needs the last "
                        f"context = {pre.context}; give a longer history")
    recent = series.values[-pre.context:]
    if not np.isfinite(recent).all():
        if pre.missing == "drop":
            raise DataError(f"{origin}: the last {pre.context} steps have a gap and the run drops windows with "
                            f"gaps (data.missing: drop); fill the gap or give a history that ends clean")
        series = fill_gaps(series)
    return series, origin


class ForecastOptions(ToolOptions):
    inputs: Any = option(..., "a CSV (or DataFrame) with the recent history: the run's time column and value "
                         "columns", flag="--input", metavar="PATH")
    horizon: int | None = option(None, "steps to forecast (default: the run's horizon)")
    out: Path | None = option(None, "where to write the forecast (CSV); a plot is written beside it (.png). "
                              "Python: nothing is written unless given", cli_default=Path("forecast.csv"))


@register_tool("forecast", ForecastOptions)
def forecast_frame(run, options: ForecastOptions):
    """Forecast the next steps after the history in --input with a trained forecasting RUN.

    Returns a DataFrame of the future times and predicted values; with ``out``, also writes it as a
    CSV and a plot of the history and the forecast beside it (``frame.attrs["files"]``)."""
    frame = _forecast(run, options.inputs, options.horizon)
    if options.out is not None:
        csv_path, plot_path = write_forecast(run, options.inputs, frame, options.out)
        frame.attrs["files"] = [str(csv_path), str(plot_path)]
    return frame


@forecast_frame.printer
def _print(frame, options: ForecastOptions) -> None:
    csv_path, plot_path = frame.attrs["files"]
    print(f"forecast: {csv_path}")
    print(f"plot:     {plot_path}")


@torch.no_grad()
def _forecast(run, inputs: Any, horizon: int | None = None):
    """Forecast the ``horizon`` steps after the history in ``inputs`` (CSV path or DataFrame).

    Returns a DataFrame: the future timestamps (continuing the grid) and one column per target, on
    the original scale. A horizon beyond the run's own rolls the model forward on its forecasts,
    which needs the targets to be all of the inputs; a shorter one keeps the first steps.
    """
    import pandas as pd

    pre = _preprocessor(run)
    series, _ = _history(run, inputs)
    horizon = pre.horizon if horizon is None else int(horizon)
    if horizon < 1:
        raise ConfigError(f"--horizon: must be at least 1; received {horizon}")
    if horizon > pre.horizon and set(pre.target_columns) != set(pre.columns):
        raise ConfigError(f"--horizon: {horizon} is beyond the run's horizon ({pre.horizon}) and the run forecasts "
                          f"{', '.join(pre.target_columns)} but reads {', '.join(pre.columns)}, so it cannot roll "
                          f"forward on its own forecasts; ask for at most {pre.horizon} steps")
    model = run.model.to("cpu").eval()
    window = torch.from_numpy(pre.scale(series.values[-pre.context:]).astype(np.float32))[None]  # (1, C, F)
    order = [pre.target_columns.index(c) for c in pre.columns] if horizon > pre.horizon else None
    steps: list[torch.Tensor] = []
    done = 0
    while done < horizon:
        out = pre.to_original(model(pre.batch(window)).double(), window.double(), run.preprocessing.scaler)[0]
        steps.append(out)  # (horizon, T) on the original scale
        done += pre.horizon
        if done < horizon:  # targets are the inputs: feed the forecast back as history
            fed = torch.from_numpy(pre.scale(out[:, order].numpy()).astype(np.float32))
            window = torch.cat([window, fed[None]], dim=1)[:, -pre.context:]
    values = torch.cat(steps)[:horizon].double().numpy()
    frame = pd.DataFrame(values, columns=pre.target_columns)
    frame.insert(0, pre.time_column, series.future(horizon))
    return frame


def write_forecast(run, inputs: Any, forecast, out: str | Path) -> tuple[Path, Path]:
    """Write ``forecast`` (the frame :func:`forecast_frame` made of ``inputs``) to ``out`` (CSV) and a plot
    of the recent history and the forecast beside it (same name, ``.png``); returns both paths."""
    from ..core.sections import pyplot

    pre = _preprocessor(run)
    series, origin = _history(run, inputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    forecast.to_csv(out, index=False)
    plot = out.with_suffix(".png")
    plt = pyplot()
    shown = min(len(series), 3 * pre.context)
    fig, axes = plt.subplots(len(pre.target_columns), 1, figsize=(8, 2.8 * len(pre.target_columns)), squeeze=False)
    for ax, name in zip(axes[:, 0], pre.target_columns):
        j = pre.columns.index(name)
        ax.plot(series.times[-shown:], series.values[-shown:, j], color="0.3", label="history")
        ax.plot(forecast[pre.time_column], forecast[name], color="tab:blue", marker=".", label="forecast")
        ax.set_title(f"{name}: {len(forecast)} steps after {Path(str(origin)).name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(plot, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out, plot
