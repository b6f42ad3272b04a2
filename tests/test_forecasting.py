"""Forecasting: the timeseries source (windows, chronological splits, scaling, gaps), the baselines'
metrics on a series where they are known in closed form, the Mackey-Glass generator, every sequence
family on forecasting windows, and the CLI end to end (train, forecast, bad inputs)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, cli, run_dirs, write_yaml

from layerwise.core.errors import ConfigError, DataError
from layerwise.data import load_data
from layerwise.data.timeseries import mackey_glass
from layerwise.models import build_model
from layerwise.runs.config import load_config
from layerwise.tasks.forecasting import ForecastEvaluator


def _bundle(data: dict, task: str = "forecasting"):
    cfg = load_config({"data": {"source": "timeseries", **data}, "model": {"family": "gru"}, "task": task})
    return load_data(cfg.data, task)


def _ramp_csv(folder: Path, n: int = 100, slope: float = 1.0, offset: float = 0.0, name: str = "ramp.csv") -> Path:
    """A series equal to ``offset + slope * step`` at integer steps 0..n-1: values reveal positions."""
    path = Path(folder) / name
    pd.DataFrame({"step": np.arange(n), "v": offset + slope * np.arange(n)}).to_csv(path, index=False)
    return path


# -- windows and splits ------------------------------------------------------------------------------


def test_windows_are_chronological_and_never_straddle_a_split(tmp_path):
    n, context, horizon = 100, 8, 3
    path = _ramp_csv(tmp_path, n)
    bundle = _bundle({"path": str(path), "time_column": "step", "context": context, "horizon": horizon,
                      "scale": False, "val_fraction": 0.2, "test_fraction": 0.2})
    a, b = 60, 80  # train [0, 60), val [60, 80), test [80, 100)
    assert bundle.spec.kind == "sequence" and bundle.spec.input_shape == (context, 1)
    assert bundle.spec.num_targets == horizon
    for name, lo, hi in (("train", 0, a), ("val", a, b), ("test", b, n)):
        split = getattr(bundle, name)
        x, y = split.x[:, :, 0].numpy(), split.y.numpy()
        # inputs are consecutive steps and the targets continue them
        assert np.array_equal(x, x[:, :1] + np.arange(context))
        assert np.array_equal(y, x[:, -1:] + 1 + np.arange(horizon))
        assert (np.diff(x[:, 0]) > 0).all()  # in time order, never shuffled
        assert y.min() >= lo and y.max() < hi  # targets stay inside their own part
        assert x.min() >= max(lo - context, 0)  # history may reach back one context, no further
        assert len(split) == hi - max(lo - context, 0) - context - horizon + 1  # every window that fits
    assert bundle.val.x.min() == a - context  # the first val window's history is the end of train


def test_stride_skips_window_starts(tmp_path):
    path = _ramp_csv(tmp_path, 60)
    bundle = _bundle({"path": str(path), "time_column": "step", "context": 5, "horizon": 2, "stride": 4,
                      "scale": False, "val_fraction": 0, "test_fraction": 0})
    assert np.array_equal(bundle.train.x[:, 0, 0].numpy(), np.arange(0, 54, 4))
    assert bundle.val is None and bundle.test is None


def test_scaling_is_fitted_on_the_train_part_only(tmp_path):
    n = 100
    path = _ramp_csv(tmp_path, n, slope=2.0, offset=10.0)
    bundle = _bundle({"path": str(path), "time_column": "step", "context": 6, "horizon": 2,
                      "val_fraction": 0.1, "test_fraction": 0.2})
    pre = bundle.preprocessor.inputs
    train_values = 10.0 + 2.0 * np.arange(70)
    assert pre.mean == pytest.approx([train_values.mean()])
    assert pre.std == pytest.approx([train_values.std()])
    whole = 10.0 + 2.0 * np.arange(n)
    assert abs(pre.mean[0] - whole.mean()) > 10  # not the statistics of the whole series
    # inputs and targets are scaled with the same train statistics; the target scaler repeats per step
    assert float(bundle.train.x[0, 0, 0]) == pytest.approx((10.0 - train_values.mean()) / train_values.std(),
                                                      abs=1e-5)
    assert bundle.preprocessor.scaler.mean == pytest.approx([train_values.mean()] * 2)
    restored = bundle.preprocessor.scaler.inverse(bundle.test.y[:1].double())
    assert restored.numpy() == pytest.approx(10.0 + 2.0 * np.array([[80, 81]]))  # the test part starts at step 80


# -- baselines and metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_naive_and_seasonal_naive_metrics_on_a_linear_ramp(tmp_path, relative):
    slope, horizon, season = 2.0, 4, 2
    path = _ramp_csv(tmp_path, 80, slope=slope, offset=5.0)
    bundle = _bundle({"path": str(path), "time_column": "step", "context": 6, "horizon": horizon,
                      "season": season, "val_fraction": 0, "test_fraction": 0.3, "relative": relative})
    if relative:  # targets are changes from the last value: on a ramp, slope * h scaled by the train std
        std = bundle.preprocessor.inputs.std[0]
        assert bundle.test.y[0].numpy() == pytest.approx(slope * np.arange(1, horizon + 1) / std, abs=1e-5)
    evaluator = ForecastEvaluator(bundle.preprocessor)
    test = bundle.test
    for lo in range(0, len(test), 5):  # several batches: the sums stream
        evaluator.update(test.y[lo:lo + 5], test.y[lo:lo + 5], test.x[lo:lo + 5])  # a perfect model
    result = evaluator.compute()
    h = np.arange(1, horizon + 1)
    # naive repeats the last value: the error at step h is slope * h
    assert result["naive_mae"] == pytest.approx(slope * (horizon + 1) / 2)
    assert result["naive_rmse"] == pytest.approx(slope * math.sqrt((h ** 2).mean()))
    assert result.details["naive_mae_per_step"] == pytest.approx(list(slope * h))
    # seasonal naive looks season * ceil(h / season) steps back
    seasonal_err = slope * season * np.ceil(h / season)
    assert result["seasonal_naive_mae"] == pytest.approx(seasonal_err.mean())
    assert result["mae"] == pytest.approx(0, abs=1e-4) and result["mase"] == pytest.approx(0, abs=1e-4)
    assert result["mape"] == pytest.approx(0, abs=1e-4)
    assert result.details["windows"] == len(test)

    # a model that forecasts exactly the naive value scores MASE 1 (a change of 0 for relative targets)
    naive = torch.zeros_like(test.y) if relative else test.x[:, -1:, 0].repeat(1, horizon)
    evaluator = ForecastEvaluator(bundle.preprocessor)
    evaluator.update(naive, test.y, test.x)
    result = evaluator.compute()
    assert result["mase"] == pytest.approx(1.0, abs=1e-5)
    assert result["smape"] == pytest.approx(result["naive_smape"], abs=1e-3)


def test_season_is_inferred_from_the_training_part(tmp_path):
    t = np.arange(600)
    path = tmp_path / "seasonal.csv"
    pd.DataFrame({"t": t, "y": np.sin(2 * np.pi * t / 12) + 0.01 * t}).to_csv(path, index=False)
    bundle = _bundle({"path": str(path), "time_column": "t", "context": 30, "horizon": 6})
    assert bundle.preprocessor.inputs.season == 12


# -- Mackey-Glass -------------------------------------------------------------------------------------


def test_mackey_glass_is_deterministic_bounded_and_delayed_by_17():
    x = mackey_glass(800, seed=3)
    assert np.array_equal(x, mackey_glass(800, seed=3))
    assert not np.array_equal(x, mackey_glass(800, seed=4))
    assert 0.2 < x.min() and x.max() < 1.5 and x.std() > 0.1  # bounded, and chaotic rather than flat
    # the series solves dx/dt = 0.2 x(t - tau) / (1 + x(t - tau)^10) - 0.1 x(t) with tau = 17, not a
    # neighbouring delay: the central-difference residual is smallest at lag 17
    t = np.arange(30, len(x) - 1)

    def residual(lag: int) -> float:
        delayed = x[t - lag]
        return float(np.abs((x[t + 1] - x[t - 1]) / 2 - (0.2 * delayed / (1 + delayed ** 10) - 0.1 * x[t])).mean())

    res = {lag: residual(lag) for lag in range(12, 23)}
    assert min(res, key=res.get) == 17
    assert res[17] < 2e-3 and res[16] > 5 * res[17] and res[18] > 5 * res[17]


def test_builtin_sources_are_reproducible():
    a = _bundle({"builtin": "mackey_glass", "length": 400, "context": 20, "horizon": 5})
    b = _bundle({"builtin": "mackey_glass", "length": 400, "context": 20, "horizon": 5})
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    sine = _bundle({"builtin": "sine_mixture", "length": 400, "context": 20, "horizon": 5})
    assert sine.spec.feature_names == ["value"] and sine.preprocessor.inputs.time_column == "t"


# -- gaps ---------------------------------------------------------------------------------------------


def _gappy_csv(folder: Path) -> Path:
    """A daily ramp of 60 days with days 20-22 missing and an empty value on day 40."""
    days = pd.date_range("2024-01-01", periods=60, freq="D")
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "v": np.arange(60.0)})
    frame.loc[40, "v"] = np.nan
    frame = frame.drop(index=[20, 21, 22])
    path = Path(folder) / "gappy.csv"
    frame.to_csv(path, index=False)
    return path


def test_interpolate_fills_gaps_linearly_in_time(tmp_path):
    bundle = _bundle({"path": str(_gappy_csv(tmp_path)), "time_column": "date", "context": 5, "horizon": 2,
                      "scale": False, "missing": "interpolate", "val_fraction": 0, "test_fraction": 0})
    assert bundle.preprocessor.inputs.frequency in ("D", "24h")  # inferred from the median spacing
    x = bundle.train.x[:, :, 0].numpy()
    assert len(x) == 60 - 7 + 1  # the three missing days are back on the grid: every window exists
    assert np.array_equal(x, x[:, :1] + np.arange(5))  # the ramp is restored exactly (days 20-22 and 40)


def test_drop_removes_every_window_touching_a_gap(tmp_path):
    bundle = _bundle({"path": str(_gappy_csv(tmp_path)), "time_column": "date", "context": 5, "horizon": 2,
                      "scale": False, "missing": "drop", "val_fraction": 0, "test_fraction": 0})
    starts = bundle.train.x[:, 0, 0].numpy()
    gaps = (20, 21, 22, 40)
    expected = [s for s in range(60 - 7 + 1) if not any(s <= g < s + 7 for g in gaps)]
    assert starts.tolist() == expected
    assert torch.isfinite(bundle.train.x).all() and torch.isfinite(bundle.train.y).all()


def test_a_calendar_grid_with_gaps_needs_its_frequency(tmp_path):
    months = pd.date_range("2020-01-01", periods=40, freq="MS")
    frame = pd.DataFrame({"month": months.strftime("%Y-%m-%d"), "v": np.arange(40.0)}).drop(index=[10])
    frame.to_csv(tmp_path / "monthly.csv", index=False)
    data = {"path": str(tmp_path / "monthly.csv"), "time_column": "month", "context": 4, "horizon": 2,
            "scale": False, "val_fraction": 0, "test_fraction": 0}
    with pytest.raises(DataError, match="not on the .* grid.*set data.frequency"):
        _bundle(data)  # months differ in length: the median spacing is no grid
    bundle = _bundle({**data, "frequency": "MS"})
    assert len(bundle.train) == 40 - 6 + 1
    # 2020-11 is filled linearly in time: October has 31 of the 61 days between the neighbours
    assert float(bundle.train.x[7, 3, 0]) == pytest.approx(9 + 2 * 31 / 61, abs=1e-5)


def _frame(n: int = 80) -> pd.DataFrame:
    return pd.DataFrame({"t": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                         "v": np.arange(n, dtype=float)})


def _edit(frame, **cells):
    for key, value in cells.items():
        column, row = key.rsplit("_", 1)
        frame[column] = (frame[column] if column in frame else np.arange(len(frame), dtype=float)).astype(object)
        frame.loc[int(row), column] = value
    return frame


@pytest.mark.parametrize("frame, data, fragments", [
    (None, {}, ["data.path", "file not found"]),
    (_edit(_frame(), t_5="not a date"), {}, ["'t' cannot be parsed as dates", "row 5", "'not a date'"]),
    (_edit(_frame(), t_6="2024-01-06"), {}, ["duplicate timestamps", "rows 5 and 6"]),
    (_frame(), {"columns": ["v", "w"]}, ["data.columns", "'w' not found", "t, v"]),
    (_edit(_frame(), w_0="abc"), {"columns": ["v", "w"]}, ["'w' is not numeric", "'abc'"]),
    (_frame().assign(w=np.nan), {"columns": ["v", "w"]}, ["'w' has no values"]),
], ids=["file_missing", "unparseable_time", "duplicate_time", "missing_column", "non_numeric", "all_nan"])
def test_bad_series_name_the_culprit(tmp_path, frame, data, fragments):
    if frame is not None:
        frame.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError) as info:
        _bundle({"path": str(tmp_path / "s.csv"), "time_column": "t", **data})
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


# -- every sequence family forecasts unchanged ----------------------------------------------------------

TINY = {"rnn": {"hidden": 8, "embedding": 8, "layers": 1}, "lstm": {"hidden": 8, "embedding": 8, "layers": 1},
        "gru": {"hidden": 8, "embedding": 8, "layers": 1}, "mingru": {"hidden": 8, "layers": 1},
        "minlstm": {"hidden": 8, "layers": 1}, "rwkv": {"width": 8, "layers": 1},
        **{f"transformer-{pool}": {"family": "transformer", "width": 8, "heads": 2, "layers": 1, "pooling": pool}
           for pool in ("last", "mean", "cls")}}


@pytest.fixture(scope="module")
def sine_bundle():
    return _bundle({"builtin": "sine_mixture", "length": 300, "context": 16, "horizon": 4})


@pytest.mark.parametrize("family", sorted(TINY))
def test_sequence_families_take_forecasting_windows(family, sine_bundle):
    cfg = load_config({"data": {"source": "timeseries", "builtin": "sine_mixture"},
                       "model": {"family": family, **TINY[family]}})  # a "family" key in TINY wins
    model = build_model(cfg.model, sine_bundle.spec)
    out = model(sine_bundle.train.x[:5])
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    out.pow(2).mean().backward()


# -- the CLI end to end -------------------------------------------------------------------------------


def _sine_frame(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    times = pd.date_range(start, periods=n, freq="h")
    load = 5 + 2 * np.sin(2 * np.pi * np.arange(n) / 24)
    return pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S"), "load": load})


def test_cli_trains_a_gru_that_beats_naive_and_forecasts(tmp_path):
    _sine_frame(700).to_csv(tmp_path / "sine.csv", index=False)
    config = write_yaml(tmp_path / "sine.yaml", {
        "name": "sine-gru",
        "data": {"source": "timeseries", "path": "sine.csv", "time_column": "time", "context": 24, "horizon": 6,
                 "stride": 2},
        "model": {"family": "gru", "hidden": 24, "embedding": 12, "layers": 1},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.01, "progress": False, "device": "cpu"},
    })
    code, _, err = cli("train", config, "--runs-dir", "runs", "--quiet", cwd=tmp_path)
    assert code == 0, err
    run = run_dirs(tmp_path / "runs")[0]
    from layerwise import load_run

    loaded = load_run(run)
    metrics = loaded.metrics["metrics"]
    assert loaded.config.task == "forecasting"  # implied by the source
    assert metrics["mase"] < 1 and metrics["mae"] < metrics["naive_mae"]
    assert loaded.preprocessing.inputs.season == 24
    assert len(loaded.metrics["details"]["mae_per_step"]) == 6
    assert "Forecasts" in (run / "report.html").read_text()

    # the recent history: 40 hours that end where a later stretch of the same sine ends
    recent = _sine_frame(740).iloc[700:]
    recent.to_csv(tmp_path / "recent.csv", index=False)
    code, _, err = cli("forecast", run, "--input", "recent.csv", "--horizon", 9, "--out", "fc.csv", cwd=tmp_path)
    assert code == 0, err
    forecast = pd.read_csv(tmp_path / "fc.csv")
    assert list(forecast.columns) == ["time", "load"] and len(forecast) == 9  # 9 > 6: rolled forward
    expected_times = pd.date_range("2024-01-31 20:00", periods=9, freq="h")
    assert pd.to_datetime(forecast["time"]).tolist() == expected_times.tolist()
    truth = 5 + 2 * np.sin(2 * np.pi * np.arange(740, 749) / 24)
    naive_err = np.abs(truth - recent["load"].iloc[-1]).mean()
    assert np.abs(forecast["load"].to_numpy() - truth).mean() < naive_err
    assert (tmp_path / "fc.png").stat().st_size > 1000
    with pytest.raises(DataError, match="layerwise forecast"):  # predict is for samples, not a history
        loaded.predict(tmp_path / "recent.csv")


def test_forecast_beyond_horizon_needs_targets_equal_inputs(tmp_path):
    from layerwise import train

    frame = _sine_frame(200)
    frame["temp"] = np.cos(np.arange(200) / 5)
    frame.to_csv(tmp_path / "two.csv", index=False)
    run = train({"data": {"source": "timeseries", "path": str(tmp_path / "two.csv"), "time_column": "time",
                          "target_columns": ["load"], "context": 12, "horizon": 3},
                 "model": {"family": "gru", "hidden": 8, "embedding": 8, "layers": 1},
                 "train": {"epochs": 1, "progress": False, "device": "cpu"}}, runs_dir=tmp_path / "runs", quiet=True)
    short = run.forecast(frame.iloc[-20:], horizon=2)
    assert list(short.columns) == ["time", "load"] and len(short) == 2
    with pytest.raises(ConfigError, match="beyond the run's horizon"):
        run.forecast(frame.iloc[-20:], horizon=5)


# -- bad inputs through the CLI -----------------------------------------------------------------------


def _bad_no_time_column(folder: Path):
    pd.DataFrame({"when": range(50), "v": range(50)}).to_csv(folder / "s.csv", index=False)
    return {"path": "s.csv", "time_column": "time"}, ["'time' not found", "when, v", "data.time_column"]


def _bad_non_monotonic(folder: Path):
    frame = pd.DataFrame({"t": np.arange(80), "v": np.arange(80.0)})
    frame.loc[[30, 31], "t"] = [31, 30]
    frame.to_csv(folder / "s.csv", index=False)
    return {"path": "s.csv", "time_column": "t"}, ["not in increasing order", "row 31", "sort the file"]


def _bad_too_few_rows(folder: Path):
    pd.DataFrame({"t": np.arange(40), "v": np.arange(40.0)}).to_csv(folder / "s.csv", index=False)
    return ({"path": "s.csv", "time_column": "t", "context": 24, "horizon": 12},
            ["train part has 28 steps", "context + horizon = 36"])


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory):
    cases = {"no_time_column": _bad_no_time_column, "non_monotonic": _bad_non_monotonic,
             "too_few_rows": _bad_too_few_rows}
    jobs = {}
    for name, make in cases.items():
        folder = tmp_path_factory.mktemp(name)
        data, fragments = make(folder)
        config = write_yaml(folder / "bad.yaml", {"data": {"source": "timeseries", **data},
                                                  "model": {"family": "gru"}, "train": {"epochs": 1}})
        jobs[name] = (folder, config, fragments)
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(cli, "train", cfg, "--runs-dir", "runs", cwd=folder)
                   for name, (folder, cfg, _) in jobs.items()}
        return {name: (futures[name].result(), jobs[name][0], jobs[name][2]) for name in jobs}


@pytest.mark.parametrize("case", ["no_time_column", "non_monotonic", "too_few_rows"])
def test_bad_series_fail_with_one_line(case, bad_results):
    (code, _, err), folder, fragments = bad_results[case]
    assert_one_line_error(code, err, *fragments)
    assert run_dirs(folder / "runs") == []
