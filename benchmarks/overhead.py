"""Training-loop overhead: layerwise's Trainer vs a plain hand-written PyTorch loop.

The same model (same initial weights), the same batches (same order, same preprocessing), the
same optimizer, in one process. Each round runs both loops for one epoch in a random order, so
machine noise and warm-up hit both alike; the ratio layerwise / plain is taken per round and the
median over rounds is printed (goal: >= 0.97).

    python benchmarks/overhead.py                      # MLP and CNN on MNIST (../shared/data/mnist)
    python benchmarks/overhead.py --limit 60000 --repeats 5   # full epochs
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from layerwise.data import load_data
from layerwise.data.loader import BatchLoader
from layerwise.models import build_model
from layerwise.runs.config import load_config
from layerwise.runs.training import prepare_bundle
from layerwise.train import Checkpoint, HistoryCSV, Trainer
from layerwise.train.optim import make_optimizer

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

MODELS = {
    "mlp": {"family": "mlp", "hidden": [256, 128], "dropout": 0.1},
    "cnn": {"family": "cnn", "channels": [32, 64], "convs_per_block": 1, "global_pool": "flatten",
            "head_hidden": 128, "dropout": 0.25},
}


def plain_epoch(model, x_all, y_all, transform, batch_size, seed, epoch, optimizer):
    """What a user writes by hand: shuffle, slice, forward, cross-entropy, backward, step."""
    model.train()
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    for lo in range(0, len(x_all), batch_size):
        idx = order[lo : lo + batch_size]
        x, y = transform(x_all[idx]), y_all[idx]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(MNIST))
    parser.add_argument("--limit", type=int, default=20000, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round (checkpoints overlap the next epoch)")
    parser.add_argument("--repeats", type=int, default=8, help="rounds (each runs both loops once)")
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.limit} samples/epoch, "
          f"{args.epochs} epochs per round, batch {args.batch_size}, {args.repeats} rounds in random order")
    order_rng = random.Random(0)
    for name in args.models.split(","):
        cfg = load_config({
            "name": f"overhead-{name}",
            "data": {"source": "idx", "path": args.data, "val_fraction": 0.0, "limit": args.limit},
            "model": MODELS[name],
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "adamw", "lr": 1e-3,
                      "progress": False, "seed": 0},
        })
        bundle = load_data(cfg.data, "classification")
        prepared = prepare_bundle(cfg, bundle)
        init = copy.deepcopy(prepared.model.state_dict())
        transform = bundle.preprocessor.inputs.batch
        x_all, y_all = bundle.train.x, bundle.train.y
        n = len(x_all)
        rates = {"plain": [], "layerwise": []}
        for r in range(args.repeats):
            for which in order_rng.sample(["plain", "layerwise"], 2):
                model = build_model(prepared.config.model, bundle.spec)
                model.load_state_dict(init)
                if which == "plain":
                    opt = make_optimizer(model.parameters(), cfg.train)
                    start = time.perf_counter()
                    for epoch in range(args.epochs):
                        plain_epoch(model, x_all, y_all, transform, args.batch_size, cfg.train.seed, epoch, opt)
                    elapsed = time.perf_counter() - start
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        # the callbacks `layerwise train` always uses: history and an atomic checkpoint
                        cbs = [HistoryCSV(Path(tmp) / "history.csv"), Checkpoint(Path(tmp) / "checkpoints")]
                        trainer = Trainer(model, prepared.task, cfg.train, callbacks=cbs, device=torch.device("cpu"),
                                          eval_cfg=cfg.evaluate)
                        loader = BatchLoader(bundle.train, args.batch_size, shuffle=True, seed=cfg.train.seed,
                                             transform=transform, train=True)
                        start = time.perf_counter()
                        trainer.fit(loader)
                        elapsed = time.perf_counter() - start
                rates[which].append(n * args.epochs / elapsed)
        ratios = [lw / pl for lw, pl in zip(rates["layerwise"], rates["plain"])]
        print(f"{name}: plain {statistics.median(rates['plain']):,.0f} samples/s, "
              f"layerwise {statistics.median(rates['layerwise']):,.0f} samples/s, "
              f"ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
