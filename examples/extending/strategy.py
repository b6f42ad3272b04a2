"""Add a training strategy: one file with a Strategy whose ``fit`` runs the one loop somewhere.

The loop (``Trainer``) is the same for every strategy; a strategy decides where and how it runs.
This one runs it on one CPU thread (torch's results on the CPU then do not depend on how many cores
the machine has) and restores the thread count afterwards. Distributed (torchrun) and federated
training are strategies of the same shape: ``train: {strategy: ddp}``.

    python examples/extending/strategy.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse

import torch

import layerwise
from layerwise import Strategy, register_strategy


@register_strategy("single_thread")
class SingleThread(Strategy):
    """The local loop on one intra-op thread."""

    def fit(self, trainer, train_loader, val_loader=None):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return trainer.fit(train_loader, val_loader)
        finally:
            torch.set_num_threads(threads)


def main(runs_dir: str) -> float:
    run = layerwise.train({"name": "iris-one-thread", "data": {"source": "builtin", "name": "iris"},
                           "model": {"family": "mlp", "hidden": [16]},
                           "train": {"epochs": 20, "lr": 0.01, "strategy": "single_thread"}},
                          runs_dir=runs_dir, quiet=True)
    accuracy = run.metrics["metrics"]["accuracy"]
    print(f"trained with train.strategy: {run.config.train.strategy}; test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) > 0.6
