"""Add a callback: a ``Callback`` subclass overriding the hooks it needs, passed to ``train``.

``state_dict`` / ``load_state_dict`` make its state part of every checkpoint, so a resumed run
continues where it stopped instead of starting the callback over.

    python examples/extending/callback.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import layerwise
from layerwise.core.callback import Callback


class BestEpoch(Callback):
    """Remembers the epoch with the lowest validation loss (and survives a resume)."""

    def __init__(self) -> None:
        self.best_epoch, self.best_loss = -1, float("inf")

    def on_epoch_end(self, trainer, logs: dict[str, Any]) -> None:
        if logs.get("val_loss", float("inf")) < self.best_loss:
            self.best_epoch, self.best_loss = int(logs["epoch"]), float(logs["val_loss"])

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_loss": self.best_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_loss = state["best_epoch"], state["best_loss"]


def main(runs_dir: str) -> int:
    best = BestEpoch()
    layerwise.train({"name": "iris-mlp", "data": {"source": "builtin", "name": "iris"},
                     "model": {"family": "mlp", "hidden": [16]}, "train": {"epochs": 6}},
                    runs_dir=runs_dir, quiet=True, callbacks=[best])
    print(f"best epoch {best.best_epoch}: val_loss {best.best_loss:.4f}")
    return best.best_epoch


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert main(parser.parse_args().runs_dir) >= 1
