"""Forecasting: predict the next ``horizon`` steps of a series from its last ``context`` steps.

The model sees windows built by the ``timeseries`` source and outputs ``horizon * targets`` numbers
(step-major), so any family that reads ``sequence`` inputs forecasts unchanged. The loss is the mean
squared error on standardized values; metrics are on the original scale and set against two
baselines made from each window's own history (Hyndman & Athanasopoulos, "Forecasting: Principles
and Practice", ch. 5): **naive** (the last observed value, repeated) and **seasonal naive** (the
value one season earlier).

Metrics (over every window, step and target of the scored split):

- ``mae``, ``rmse``; ``smape`` = mean of 2|p - y| / (|p| + |y|) in percent (points where both are 0
  are skipped); ``mape`` = mean of |p - y| / |y| in percent over points where |y| exceeds 1e-3 times
  the target's training std (near-zero truths would make it explode; absent when every point is
  skipped, and ``details["mape_skipped"]`` counts them);
- ``mase`` = model MAE / naive MAE on the same windows (< 1: better than naive). Hyndman's MASE scales
  by the in-sample one-step naive MAE of the training series instead; this one compares like with
  like, multi-step forecasts against the multi-step naive forecast. ``mase_seasonal`` = model MAE /
  seasonal-naive MAE;
- ``naive_mae``, ``naive_rmse``, ``naive_smape`` and the same for ``seasonal_naive_``;
- ``details``: the MAE at each step ahead for the model and both baselines, and the season used.
"""

from __future__ import annotations

import html
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import Task, register_task
from .evaluation import EvalResult

__all__ = ["ForecastEvaluator", "Forecasting", "baseline_forecasts"]


def baseline_forecasts(history: torch.Tensor, horizon: int, season: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive and seasonal-naive forecasts (B, horizon, T) from history (B, context, T).

    Seasonal naive at step h (1-based) repeats the value at ``h - season * ceil(h / season)`` steps
    from the last observation, which always lies within the last ``season`` steps of the history.
    """
    context = history.shape[1]
    naive = history[:, -1:, :].expand(-1, horizon, -1)
    steps = torch.arange(1, horizon + 1)
    index = context - 1 + steps - season * torch.ceil(steps / season).long()
    return naive, history[:, index.to(history.device), :]


class ForecastEvaluator:
    """Streaming sums of errors for the model and both baselines: memory does not grow with the data."""

    def __init__(self, preprocessing):
        self.pre = preprocessing.inputs  # TimeSeriesPreprocessor
        self.scaler = preprocessing.scaler
        self.horizon = self.pre.horizon
        self.targets = len(self.pre.target_columns)
        self.season = self.pre.season
        stds = [self.pre.std[i] for i in self.pre.target_index]
        self.zero = torch.tensor(stds, dtype=torch.float64) * 1e-3  # below this a truth counts as ~0 for mape
        h = self.horizon
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64)

        # per forecaster: absolute and squared errors by step ahead, sMAPE terms and how many count
        self.sums = {name: {"abs": zeros(h), "sq": zeros(h), "smape": zeros(), "smape_n": zeros()}
                     for name in ("model", "naive", "seasonal_naive")}
        self.mape = torch.zeros((), dtype=torch.float64)
        self.mape_n = torch.zeros((), dtype=torch.float64)
        self.mape_skipped = 0
        self.count = 0  # windows seen (each contributes targets values per step)

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        if x is None:
            raise ValueError("ForecastEvaluator.update needs the input windows x for the baselines")
        b, h = outputs.shape[0], self.horizon
        x = x.detach().double().cpu()
        pred = self.pre.to_original(outputs.detach().double().cpu(), x, self.scaler)  # (B, horizon, T)
        true = self.pre.to_original(y.reshape(outputs.shape).double().cpu(), x, self.scaler)
        history = self.pre.unscale_targets(x)  # (B, context, T)
        naive, seasonal = baseline_forecasts(history, h, self.season)
        for name, forecast in (("model", pred), ("naive", naive), ("seasonal_naive", seasonal)):
            err = forecast - true
            sums = self.sums[name]
            sums["abs"] += err.abs().sum(dim=(0, 2))
            sums["sq"] += (err ** 2).sum(dim=(0, 2))
            denom = forecast.abs() + true.abs()
            ok = denom > 0
            sums["smape"] += (2 * err.abs()[ok] / denom[ok]).sum()
            sums["smape_n"] += ok.sum()
        ok = true.abs() > self.zero
        self.mape += ((pred - true).abs()[ok] / true.abs()[ok]).sum()
        self.mape_n += ok.sum()
        self.mape_skipped += int((~ok).sum())
        self.count += b

    def compute(self, class_names=None) -> EvalResult:
        n = max(self.count * self.targets, 1)  # values per step
        metrics: dict[str, float] = {}
        per_step: dict[str, list[float]] = {}
        for name, sums in self.sums.items():
            prefix = "" if name == "model" else f"{name}_"
            metrics[f"{prefix}mae"] = float(sums["abs"].sum()) / (n * self.horizon)
            metrics[f"{prefix}rmse"] = math.sqrt(float(sums["sq"].sum()) / (n * self.horizon))
            if sums["smape_n"] > 0:
                metrics[f"{prefix}smape"] = 100 * float(sums["smape"] / sums["smape_n"])
            per_step[f"{prefix}mae_per_step"] = (sums["abs"] / n).tolist()
            if name == "model" and self.mape_n > 0:
                metrics["mape"] = 100 * float(self.mape / self.mape_n)
        for key, base in (("mase", "naive_mae"), ("mase_seasonal", "seasonal_naive_mae")):
            if metrics[base] > 0:
                metrics[key] = metrics["mae"] / metrics[base]
        order = ["mae", "rmse", "mape", "smape", "mase", "mase_seasonal"]
        ordered = {k: metrics[k] for k in order if k in metrics}
        ordered.update({k: v for k, v in metrics.items() if k not in ordered})
        details = {**per_step, "season": self.season, "windows": self.count, "mape_skipped": self.mape_skipped}
        return EvalResult(ordered, details)


@register_task("forecasting")
class Forecasting(Task):
    target = "numeric"
    main_metric = "mae"
    greater_is_better: ClassVar[dict[str, bool]] = {}  # every metric here is lower-is-better

    def loss(self, outputs, y):
        y = y.reshape(outputs.shape)
        return F.mse_loss(outputs.float(), y.float()), y.shape[0]

    def batch_sums(self, outputs, y):
        scaler = self.preprocessing.scaler
        pred, true = scaler.inverse(outputs.detach().float()), scaler.inverse(y.reshape(outputs.shape).float())
        return {"mae": (pred - true).abs().mean(1).sum()}

    def predict(self, outputs):
        return {"value": self.preprocessing.scaler.inverse(outputs.float())}

    def evaluator(self, eval_cfg):
        return ForecastEvaluator(self.preprocessing)


# -- report section ------------------------------------------------------------------------------


def _report_section(run):
    """Test windows (truth, model, naive, seasonal naive) and the model-vs-baselines table."""
    if run.config.task != "forecasting":
        return None
    from ..core.errors import LayerwiseError
    from ..core.sections import figure_html, pyplot

    metrics = run.metrics.get("metrics", {})
    rows = []
    for label, prefix in (("model", ""), ("naive", "naive_"), ("seasonal naive", "seasonal_naive_")):
        cells = "".join(f"<td>{metrics[prefix + m]:.4f}</td>" if prefix + m in metrics else "<td>–</td>"
                        for m in ("mae", "rmse", "smape"))
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    mase = " ".join(f"{k} = {metrics[k]:.3f}." for k in ("mase", "mase_seasonal") if k in metrics)
    pre = run.preprocessing.inputs
    body = (f"<p>Season used by the seasonal-naive baseline: {pre.season} steps. {html.escape(mase)} "
            f"MASE below 1 means the model beats the baseline.</p>"
            "<table><thead><tr><th>forecast</th><th>MAE</th><th>RMSE</th><th>sMAPE %</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
    try:
        split = getattr(run.data, run.metrics.get("split", "test"), None)
    except LayerwiseError:
        split = None  # the data moved since training: the table still stands
    if split is None or len(split) == 0:
        return "Forecasts", body
    plt = pyplot()
    count = min(4, len(split))
    picks = torch.linspace(0, len(split) - 1, count).round().long()
    x = split.x[picks]
    with torch.no_grad():
        model = run.model.to("cpu").eval()
        out = model(run.preprocessing.inputs.batch(x))
    h, scaler = pre.horizon, run.preprocessing.scaler
    pred = pre.to_original(out.double(), x.double(), scaler)
    true = pre.to_original(split.y[picks].double(), x.double(), scaler)
    history = pre.unscale_targets(x.double())
    naive, seasonal = baseline_forecasts(history, h, pre.season)
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count, 3.0), squeeze=False)
    past, future = range(-pre.context + 1, 1), range(1, h + 1)
    for i, ax in enumerate(axes[0]):
        ax.plot(past, history[i, :, 0], color="0.5", label="history")
        ax.plot(future, true[i, :, 0], color="black", marker=".", label="truth")
        ax.plot(future, pred[i, :, 0], color="tab:blue", marker=".", label="model")
        ax.plot(future, naive[i, :, 0], color="tab:orange", linestyle="--", label="naive")
        ax.plot(future, seasonal[i, :, 0], color="tab:green", linestyle=":", label="seasonal naive")
        ax.axvline(0.5, color="0.8")
        ax.set_title(f"window {int(picks[i])}: {pre.target_columns[0]}", fontsize=9)
        ax.set_xlabel("steps from the last observation", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    body += figure_html(fig, "test windows: truth, model and baselines")
    details = run.metrics.get("details", {})
    if "mae_per_step" in details:
        fig, ax = plt.subplots(figsize=(6, 3))
        for key, label in (("mae_per_step", "model"), ("naive_mae_per_step", "naive"),
                           ("seasonal_naive_mae_per_step", "seasonal naive")):
            if key in details:
                ax.plot(range(1, len(details[key]) + 1), details[key], marker=".", label=label)
        ax.set_xlabel("steps ahead")
        ax.set_ylabel("MAE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        body += figure_html(fig, "MAE by steps ahead")
    return "Forecasts", body


def _register() -> None:
    from ..core.sections import REPORT_SECTIONS, register_section

    if "forecasting" not in REPORT_SECTIONS:
        register_section("forecasting")(_report_section)


_register()
