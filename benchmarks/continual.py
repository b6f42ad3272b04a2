"""Continual learning on split-MNIST (issue 14, paradigms part e): naive fine-tuning, EWC and
experience replay, class-incremental, against joint training on all classes at once.

Protocol: MNIST from the IDX files (``source: idx``: 60,000 training digits less 5% for
validation, scored on the 10,000 of t10k), cut into 5 experiences of 2 classes ({0, 1}, {2, 3}, ...)
trained one after another in one run, with one head over the 10 classes and no experience id at
test time (the class-incremental scenario of van de Ven & Tolias 2019). Every method trains the same
MLP (784-400-400-10, ReLU, no dropout; van de Ven & Tolias' network) with Adam (lr 0.001, batch 128)
for ``--epochs`` epochs per experience; replay joins each batch with as many samples of a
class-balanced memory of ``--replay`` past digits; EWC is the online form (one Fisher, decay 1) on 500
samples per experience, at each ``--lambdas``. Joint training is the reference: the same network
on all classes at once for ``--epochs`` epochs, the same number of passes over each sample.
Average accuracy is the mean over the 5 experiences of the test accuracy on its classes after the
last one; forgetting (Chaudhry et al. 2018) the mean over the first 4 of their best accuracy once
learnt minus their final one.

    python benchmarks/continual.py [--epochs 1] [--replay 1000] [--lambdas 1000,100000] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def config(mnist: Path, method: str, epochs: int, seed: int, **task) -> dict:
    experiences = method != "joint"
    return {"name": f"split-mnist-{method}",
            "data": {"source": "idx", "path": str(mnist), "val_fraction": 0.05},
            "model": {"family": "mlp", "hidden": [400, 400], "dropout": 0.0},
            "task": {"name": "continual", "method": method, **task} if experiences else "classification",
            "train": {"epochs": epochs * 5 if experiences else epochs, "batch_size": 128, "lr": 0.001,
                      "optimizer": "adam", "seed": seed, "progress": False},
            "evaluate": {"baselines": False, "misclassified": 0}}


def score(run) -> tuple[float, float, float]:
    """Accuracy over all classes, average accuracy and forgetting (NaN for the joint run) of a run."""
    metrics = run.metrics["metrics"]
    if "average_accuracy" in metrics:
        return metrics["accuracy"], metrics["average_accuracy"], metrics["forgetting"]
    from layerwise.data.loader import BatchLoader
    from layerwise.tasks.continual import experience_accuracies

    loader = BatchLoader(run.data.test, 1000, transform=run.preprocessing.inputs.batch)
    groups = [[2 * k, 2 * k + 1] for k in range(5)]
    return metrics["accuracy"], float(np.mean(experience_accuracies(run.model, loader, groups, 10))), float("nan")


def main() -> None:
    import layerwise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/layerwise-continual"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per experience")
    parser.add_argument("--replay", type=int, default=1000, help="replay memory size (samples)")
    parser.add_argument("--lambdas", default="1000,100000", help="EWC strengths, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated: mean (± std) over them")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [("joint (all classes at once)", "joint", {}), ("naive fine-tuning", "naive", {}),
               *[(f"EWC, λ = {lam:g}", "ewc", {"ewc_lambda": lam}) for lam in map(float, args.lambdas.split(","))],
               (f"replay, memory {args.replay}", "replay", {"replay_size": args.replay})]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; split-MNIST, 5 experiences of 2 classes, "
          f"{args.epochs} epoch(s) per experience, seeds {seeds}", flush=True)
    rows = []
    for label, method, task in methods:
        scores, seconds = [], []
        for seed in seeds:
            started = time.perf_counter()
            run = layerwise.train(config(args.mnist, method, args.epochs, seed, **task), runs_dir=args.runs, quiet=True)
            seconds.append(time.perf_counter() - started)
            scores.append(score(run))
            print(f"  {label}, seed {seed}: {', '.join(f'{v:.4f}' for v in scores[-1])} ({seconds[-1]:.0f} s), "
                  f"{run.path}", flush=True)
        rows.append((label, np.array(scores), np.mean(seconds)))

    def cell(values: np.ndarray) -> str:
        if np.isnan(values).all():
            return "–"
        text = f"{100 * values.mean():.1f}"
        return text + (f" ± {100 * values.std(ddof=1):.1f}" if len(values) > 1 else "")

    print("\n| method | average accuracy (%) | forgetting (points) | test accuracy, all classes (%) | time per run |")
    print("| --- | --- | --- | --- | --- |")
    for label, values, seconds in rows:
        print(f"| {label} | {cell(values[:, 1])} | {cell(values[:, 2])} | {cell(values[:, 0])} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
