"""Learning from less labelled data (issue 14): each paradigm against its simple baseline.

(d) Prototypical networks (Snell et al. 2017) on MNIST: a CNN trained in 5-way 5-shot episodes of
    the digits 0-4 only (the IDX training files), scored on 600 episodes each of 5-way 1-shot and
    5-shot of the digits 5-9 from the t10k test files, never seen in training: mean accuracy with a
    95% interval over episodes. Beside it, on the very same episodes: nearest class mean on raw
    pixels, and on the features of the same CNN with random weights (what the training adds).

The other parts of the issue, (a) fine-tuning vs training from scratch at 1/10/100% of the labels,
(b) SimCLR/MAE probes, (c) image-text retrieval and (e) split-MNIST continual learning, arrive with
their features.

    python benchmarks/paradigms.py --parts d [--mnist ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def few_shot(mnist: Path, runs: Path, epochs: int, episodes: int) -> None:
    import layerwise
    from layerwise.models import build_model
    from layerwise.tasks.evaluation import evaluate_model

    config = {"name": "paradigms-prototypical",
              "data": {"source": "idx", "path": str(mnist), "val_fraction": 0.05},
              "model": {"family": "cnn", "channels": [32, 64], "convs_per_block": 1, "dropout": 0.0},
              "task": {"name": "prototypical", "ways": 5, "shots": 5, "queries": 15, "episodes": episodes,
                       "held_out": ["5", "6", "7", "8", "9"], "eval_shots": [1, 5], "eval_episodes": 600},
              "train": {"epochs": epochs, "lr": 0.001, "progress": False},
              "evaluate": {"baselines": False}}
    started = time.perf_counter()
    run = layerwise.train(config, runs_dir=runs, quiet=True)
    seconds = time.perf_counter() - started
    task, data = run.task, run.data
    loader = task.loader(data.test, "test", run.config, run.preprocessing.inputs.batch, "cpu")

    class Pixels(torch.nn.Module):  # nearest class mean on the raw (normalised) pixels
        def forward_features(self, x):
            return x.flatten(1)

        def forward(self, x):
            return x.flatten(1)

    torch.manual_seed(0)
    random_cnn = build_model(run.config.model, run.spec)
    rows = [("prototypical network (trained)", run.metrics["metrics"], f"{seconds:.0f} s"),
            ("raw pixels, nearest class mean", evaluate_model(Pixels(), task, loader, run.config.evaluate), "–"),
            ("same CNN, random weights", evaluate_model(random_cnn, task, loader, run.config.evaluate), "–")]
    print(f"\n(d) MNIST, 5-way episodes of the held-out digits 5-9 (t10k), 600 episodes each, 15 queries per class; "
          f"trained on digits 0-4 only ({epochs} epochs of {episodes} 5-shot episodes), run {run.path}\n")
    print("| embedding | 1-shot accuracy | 5-shot accuracy | train time |")
    print("| --- | --- | --- | --- |")
    for name, metrics, time_s in rows:
        cells = [f"{100 * metrics[f'accuracy_{k}shot']:.1f} ± {100 * metrics[f'ci95_{k}shot']:.1f}" for k in (1, 5)]
        print(f"| {name} | {cells[0]} | {cells[1]} | {time_s} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="d", help="comma-separated parts to run (built so far: d)")
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/layerwise-paradigms"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=100, help="training episodes per epoch")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"d"}
    if unknown:
        parser.error(f"parts not built yet: {', '.join(sorted(unknown))}; built: d")
    if "d" in parts:
        few_shot(args.mnist, args.runs, args.epochs, args.episodes)


if __name__ == "__main__":
    main()
