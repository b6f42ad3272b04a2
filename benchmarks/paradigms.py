"""Learning from less labelled data (issue 14): each paradigm against its simple baseline.

(d) Prototypical networks (Snell et al. 2017) on MNIST: a CNN trained in 5-way 5-shot episodes of
    the digits 0-4 only (the IDX training files), scored on 600 episodes each of 5-way 1-shot and
    5-shot of the digits 5-9 from the t10k test files, never seen in training: mean accuracy with a
    95% interval over episodes. Beside it, on the very same episodes: nearest class mean on raw
    pixels, and on the features of the same CNN with random weights (what the training adds).

(a) Fine-tuning against training from scratch: a CNN trained on one data set (MNIST's first 10,000
    training images, or the bundled 8x8 digits) is fine-tuned (every layer, a fresh head) on the other
    with 1%, 10% and 100% of its training labels (MNIST: of those 10,000; ``data.limit``: the first N
    of the shuffled training split, validation and test splits unchanged), against the same CNN from
    random weights, both for the same number of optimizer steps (so a run with 100 labels is not
    also a run with 20 steps). The convolutions and global pooling make the weights fit either
    image size.

(b) Self-supervised pretraining on MNIST: SimCLR (a CNN) and MAE (a ViT, 4x4 patches) pretrained
    without labels on the first ``--pretrain-rows`` training images, then frozen; a linear probe and
    a k-NN classifier (``layerwise probe``) fitted on 1%, 10% and 100% of the labels of those
    images (stratified, mean of 3 draws below 100%) and scored on the first 5,000 t10k images.
    Beside each, on the very same samples: raw pixels, and the same architecture with random weights.

(c) Image-text contrastive learning (CLIP) on examples/data/digit_pairs (400 bundled 8x8 digits with
    captions GENERATED from their labels by templates; 60/20/20 stratified split): recall@1/5 both
    ways on the test pairs and zero-shot accuracy from class-name prompts, for the trained model and
    for the same two encoders with random weights, beside chance.

(e) Split-MNIST continual learning (naive, EWC and replay against joint training): benchmarks/continual.py,
    run with its defaults by ``--parts e``.

    python benchmarks/paradigms.py --parts a,b,c,d,e [--mnist ../shared/data/mnist]
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


def fine_tuning(mnist: Path, runs: Path, steps: int) -> None:
    import math

    import layerwise

    cnn = {"family": "cnn", "channels": [32, 64], "convs_per_block": 2}
    # MNIST's labels: a pool of its first 10,000 (shuffled) training images, as in (b), to keep it minutes
    sets = {"MNIST": ({"source": "idx", "path": str(mnist), "val_fraction": 0.01}, 10_000),
            "digits": ({"source": "builtin", "name": "digits"}, 1_294)}

    def train(rows: int, budget: int) -> dict:
        """AdamW with a one-cycle schedule over ``budget`` optimizer steps, whatever the number of labels."""
        return {"epochs": math.ceil(budget / math.ceil(rows / 64)), "batch_size": 64, "optimizer": "adamw",
                "lr": 0.003, "scheduler": "onecycle", "progress": False}

    sources = {}
    for name, (data, rows) in sets.items():
        sources[name] = layerwise.train({"name": f"paradigms-source-{name}", "data": {**data, "limit": rows},
                                         "model": cnn, "train": train(rows, 3 * steps),
                                         "evaluate": {"baselines": False}}, runs_dir=runs, quiet=True)
        print(f"source {name}: test accuracy {sources[name].metrics['metrics']['accuracy']:.3f} ({sources[name].path})")
    print(f"\n(a) fine-tuning every layer of a CNN trained on the other set vs the same CNN from random weights; "
          f"{steps} optimizer steps of 64 samples whatever the number of labels, AdamW lr 0.003 one-cycle, the last "
          f"weights; test accuracy on the target's own test split\n")
    print("| target | labels | from scratch | fine-tuned | pretrained on |")
    print("| --- | --- | --- | --- | --- |")
    for target, (data, rows) in sets.items():
        source = next(n for n in sets if n != target)
        for share in (0.01, 0.1, 1.0):
            limit = max(10, round(share * rows))
            scores = []
            for init in (None, str(sources[source].path)):
                run = layerwise.train({"name": f"paradigms-{target}-{share}", "data": {**data, "limit": limit},
                                       "model": {**cnn, "init_from": init}, "train": train(limit, steps),
                                       "evaluate": {"baselines": False}}, runs_dir=runs, quiet=True)
                scores.append(run.metrics["metrics"]["accuracy"])
            print(f"| {target} | {limit} ({share:.0%}) | {scores[0]:.3f} | {scores[1]:.3f} | {source} |", flush=True)


def self_supervised(mnist: Path, runs: Path, epochs: int, rows: int) -> None:
    import layerwise

    data = {"source": "idx", "path": str(mnist), "limit": rows, "val_fraction": 0.05}
    methods = {
        "SimCLR (CNN 32-64)": ({"family": "cnn", "channels": [32, 64], "convs_per_block": 1},
                               {"name": "contrastive", "method": "simclr", "temperature": 0.5,
                                "augment": {"shift": 0.1, "rotation": 15, "scale": 0.25, "noise": 0.1}}),
        "MAE (ViT 64 x 4, 4x4 patches)": ({"family": "vit", "width": 64, "layers": 4, "heads": 4, "patch_size": 4},
                                          {"name": "masked_autoencoder", "mask_ratio": 0.75, "decoder_width": 64,
                                           "decoder_layers": 2}),
    }
    print(f"\n(b) MNIST: pretrained without labels on the first {rows} training images ({epochs} epochs, batch 256, "
          f"Adam lr 0.002), frozen; probes on 1/10/100% of those images' labels, scored on the first 5,000 t10k "
          f"images\n")
    for name, (model, task) in methods.items():
        started = time.perf_counter()
        run = layerwise.train({"name": "paradigms-" + task["name"], "data": data, "model": model, "task": task,
                               "train": {"epochs": epochs, "batch_size": 256, "lr": 0.002, "progress": False}},
                              runs_dir=runs, quiet=True)
        seconds = time.perf_counter() - started
        result = run.probe(budgets=[0.01, 0.1, 1.0], max_train=rows, max_test=5000, draws=3)
        print(f"{name}: pretraining {seconds:.0f} s, run {run.path}; test {run.metrics['metrics']}\n")
        print("| representation | labels | linear probe | k-NN |")
        print("| --- | --- | --- | --- |")
        for row in result.rows:
            print(f"| {row['representation']} | {row['labels']} ({row['budget']:.0%}) | {row['linear']:.3f} | "
                  f"{row['knn']:.3f} |")
        print()


def image_text(runs: Path, seeds: list[int]) -> None:
    import numpy as np
    import yaml

    import layerwise
    from layerwise.data.loader import BatchLoader
    from layerwise.models import build_model
    from layerwise.tasks.evaluation import evaluate_model
    from layerwise.train.checkpoint import seed_everything

    config = yaml.safe_load((ROOT / "examples" / "clip_digits.yaml").read_text())  # the example, as written
    config["data"]["path"] = str(ROOT / "examples" / "data" / "digit_pairs" / "captions.csv")
    keys = ["i2t_recall_1", "i2t_recall_5", "t2i_recall_1", "t2i_recall_5", "i2t_class_recall_1", "t2i_class_recall_1",
            "zero_shot_accuracy"]
    trained, untrained, chance = [], [], []
    for seed in seeds:
        config["train"] = {**config["train"], "seed": seed, "progress": False}
        run = layerwise.train(config, runs_dir=runs, quiet=True)
        trained.append([run.metrics["metrics"][k] for k in keys])
        chance.append(run.metrics["details"]["chance_recall_1"])
        seed_everything(seed)
        fresh = build_model(run.config.model, run.spec)
        run.task.extend_model(fresh)
        loader = BatchLoader(run.data.test, 64, transform=run.preprocessing.inputs.batch)
        result = evaluate_model(fresh, run.task, loader, run.config.evaluate, final=True)
        untrained.append([result[k] for k in keys])
    print(f"\n(c) image-text pairs of examples/data/digit_pairs (captions generated from the labels), test split of "
          f"{len(run.data.test)} pairs; a match is an identical caption; mean over seeds {seeds}\n")
    print("| model | i2t recall@1 | i2t recall@5 | t2i recall@1 | t2i recall@5 | i2t class recall@1 | "
          "t2i class recall@1 | zero-shot accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in (("CLIP, CNN + transformer (trained)", trained), ("same encoders, random weights", untrained)):
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.mean(rows, axis=0)) + " |")
    c = float(np.mean(chance))
    share = 1 / len(run.spec.class_names)  # stratified: each class about equally present
    print(f"| chance | {c:.3f} | – | {c:.3f} | – | {share:.3f} | {share:.3f} | {share:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d,e", help="comma-separated parts to run: a, b, c, d, e")
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/layerwise-paradigms"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=100, help="(d) training episodes per epoch")
    parser.add_argument("--finetune-steps", type=int, default=500, help="(a) optimizer steps of every fine-tuning "
                        "and scratch run (the sources train three times as long)")
    parser.add_argument("--ssl-epochs", type=int, default=8, help="(b) pretraining epochs")
    parser.add_argument("--pretrain-rows", type=int, default=10000, help="(b) MNIST training images pretrained on")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"a", "b", "c", "d", "e"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}; the parts are a, b, c, d, e")
    if "c" in parts:
        image_text(args.runs, [0, 1, 2])
    if "a" in parts:
        fine_tuning(args.mnist, args.runs, args.finetune_steps)
    if "b" in parts:
        self_supervised(args.mnist, args.runs, args.ssl_epochs, args.pretrain_rows)
    if "d" in parts:
        few_shot(args.mnist, args.runs, args.epochs, args.episodes)
    if "e" in parts:  # its own script, with its own options (benchmarks/continual.py --help)
        import subprocess
        import sys

        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "continual.py"), "--mnist", str(args.mnist)],
                       check=True)


if __name__ == "__main__":
    main()
