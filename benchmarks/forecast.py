"""Forecasting: every sequence family against the naive and seasonal-naive baselines.

Two series: Mackey-Glass (tau = 17, generated) and the monthly airline passengers 1949-1960 (Box &
Jenkins, series G; shipped as examples/data/airline_passengers.csv). Each family trains with the
same small budget on the same chronological split; the script prints test MAE, RMSE, sMAPE, MASE
against naive (``mase``) and seasonal naive (``mase_seasonal``), and the training time. The baselines
are computed from each test window's own history, so they are the same for every family.

    python benchmarks/forecast.py               # the full run (about 5 minutes on 2 cores)
    python benchmarks/forecast.py --quick       # 2 epochs each: checks that everything runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import layerwise

ROOT = Path(__file__).resolve().parents[1]

SERIES = {
    # context 64: long enough to hold one quasi-period (~50 steps), which seasonal naive then uses
    "mackey_glass (tau=17, 2000 steps, context 64 -> 12)": (
        {"source": "timeseries", "builtin": "mackey_glass", "length": 2000, "context": 64, "horizon": 12,
         "stride": 2}, {"epochs": 10, "batch_size": 64}),
    "airline passengers (144 months, context 24 -> 12, relative)": (
        {"source": "timeseries", "path": str(ROOT / "examples" / "data" / "airline_passengers.csv"),
         "time_column": "month", "context": 24, "horizon": 12, "relative": True}, {"epochs": 60, "batch_size": 16}),
}

# small models of comparable size (tens of thousands of parameters); transformers read the last position
FAMILIES = {
    "rnn": {"embedding": 32, "hidden": 64, "layers": 1},
    "lstm": {"embedding": 32, "hidden": 64, "layers": 1},
    "gru": {"embedding": 32, "hidden": 64, "layers": 1},
    "mingru": {"hidden": 64, "layers": 2, "dropout": 0.0},
    "minlstm": {"hidden": 64, "layers": 2, "dropout": 0.0},
    "rwkv": {"width": 64, "layers": 2},
    "transformer": {"width": 64, "heads": 4, "layers": 2, "pooling": "last", "max_len": 64},
}


def main(quick: bool = False, runs_dir: str = "/tmp/layerwise-bench-forecast") -> None:
    for title, (data, budget) in SERIES.items():
        print(title)
        print(f"  {'family':12s} {'mae':>8s} {'rmse':>8s} {'smape%':>7s} {'mase':>6s} {'mase_s':>6s} {'params':>7s} "
              f"{'train_s':>7s}")
        baselines = None
        for family, params in FAMILIES.items():
            train = {"lr": 0.003, "scheduler": "cosine", "grad_clip": 1.0, "progress": False, "device": "cpu",
                     "seed": 0, **budget, **({"epochs": 2} if quick else {})}
            config = {"name": f"bench-forecast-{family}", "task": "forecasting", "data": data,
                      "model": {"family": family, **params}, "train": train}
            started = time.perf_counter()
            run = layerwise.train(config, runs_dir=runs_dir, quiet=True)
            wall = time.perf_counter() - started
            m, info = run.metrics["metrics"], run.metrics["training"]
            print(f"  {family:12s} {m['mae']:8.4f} {m['rmse']:8.4f} {m['smape']:7.2f} {m['mase']:6.3f} "
                  f"{m['mase_seasonal']:6.3f} {info['parameters']:7d} {info['duration_s']:7.1f}"
                  f"   (wall {wall:.1f} s)")
            baselines = m
        for key in ("naive", "seasonal_naive"):
            print(f"  {key:14s}{baselines[key + '_mae']:8.4f} {baselines[key + '_rmse']:8.4f} "
                  f"{baselines[key + '_smape']:7.2f}")
        print(f"  (season {run.preprocessing.inputs.season} steps, {run.metrics['details']['windows']} test windows)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs per model: a smoke test")
    main(parser.parse_args().quick)
