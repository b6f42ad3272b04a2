"""Callbacks: the extension point of the training loop.

A callback overrides any of a few hooks, each receiving the trainer (and a ``logs`` dict where one
exists). To stop training a callback sets ``trainer.should_stop = True``; to survive a resume it
returns its state from ``state_dict`` (saved in every checkpoint).
"""

from __future__ import annotations

import csv
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..core.callback import Callback
from ..core.io import atomic_write
from .checkpoint import save_checkpoint

__all__ = ["Callback", "EarlyStopping", "Checkpoint", "HistoryCSV", "ProgressBar", "EpochPrinter"]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "auto",
                 min_delta: float = 0.0, restore_best: bool = True):
        from ..tasks import metric_mode

        self.monitor = monitor
        self.patience = patience
        self.mode = metric_mode(monitor) if mode == "auto" else mode
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg) -> "EarlyStopping":
        """From a :class:`~layerwise.core.config.EarlyStoppingConfig` (``train.early_stopping``)."""
        return cls(cfg.monitor, cfg.patience, cfg.mode, cfg.min_delta, cfg.restore_best)

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer, logs):
        if self.monitor not in logs:
            from ..core.errors import ConfigError

            raise ConfigError(f"train.early_stopping.monitor: '{self.monitor}' is not logged; "
                              f"choose one of: {', '.join(k for k in logs if k not in ('epoch', 'step'))}")
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, int(logs["epoch"]), 0
            if self.restore_best:
                self.best_weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True
                trainer.stop_reason = (f"early stopping: {self.monitor} did not improve for {self.patience} "
                                       f"epochs (best {self.best:.4g} at epoch {self.best_epoch})")

    def on_fit_end(self, trainer):
        if self.restore_best and self.best_weights is not None and not trainer.diverged:
            trainer.model.load_state_dict(self.best_weights)
            trainer.restored_epoch = self.best_epoch

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state.get("best_weights")


def _snapshot(obj: Any) -> Any:
    """A copy of a state whose tensors training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


class Checkpoint(Callback):
    """Write ``checkpoints/last.pt`` atomically after every epoch (and every N steps if asked).

    By default the write (serialization and fsync) runs in a background thread on a snapshot of the
    state, so training does not wait for the disk; the next write, the end of training and a
    divergence wait for it. A kill at any moment leaves the previous complete checkpoint, and a
    checkpoint is only written of finite weights, so the one a resume reads is a good one.

    ``keep_last``: also keep the last N as ``step-NNNNNNNN.pt`` (hard links of ``last.pt``: no
    second copy on disk). ``keep_best``: also keep ``best.pt``, the epoch with the best ``monitor``.
    """

    def __init__(self, folder: Path, every_steps: int | None = None, background: bool = True, keep_last: int = 1,
                 keep_best: bool = False, monitor: str = "val_loss"):
        self.folder = Path(folder)
        self.every_steps = every_steps
        self.background = background
        self.keep_last, self.keep_best, self.monitor = keep_last, keep_best, monitor
        self.best: float | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def path(self) -> Path:
        return self.folder / "last.pt"

    def _write(self, state: dict[str, Any], step: int, best: bool) -> None:
        try:
            save_checkpoint(self.path, state)
            if self.keep_last > 1:
                self._link(self.folder / f"step-{step:08d}.pt")
                for old in sorted(self.folder.glob("step-*.pt"))[:-self.keep_last]:
                    old.unlink(missing_ok=True)
            if best:
                self._link(self.folder / "best.pt")
        except BaseException as exc:  # surfaced in the training thread by wait()
            self._error = exc

    def _link(self, target: Path) -> None:
        """``target`` becomes the checkpoint just written (atomically: a link to a temporary name, renamed)."""
        import os

        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        os.link(self.path, tmp)
        os.replace(tmp, target)

    def save(self, trainer, best: bool = False) -> None:
        self.wait()
        if not trainer.weights_finite():  # never let a diverged state overwrite the last good checkpoint
            trainer._diverge(f"the model's weights became non-finite by step {trainer.global_step}")
        if not self.background:
            self._write(trainer.state_dict(), trainer.global_step, best)
            self.wait()
            return
        self._thread = threading.Thread(target=self._write, args=(_snapshot(trainer.state_dict()),
                                                                  trainer.global_step, best),
                                        name="layerwise-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def on_batch_end(self, trainer, logs):
        if self.every_steps and logs.get("optimizer_step") and trainer.global_step % self.every_steps == 0:
            trainer.assert_finite()  # never let a diverged state overwrite the last good checkpoint
            self.save(trainer)

    def on_epoch_end(self, trainer, logs):
        best = False
        if self.keep_best and isinstance(logs.get(self.monitor), (int, float)):
            from ..tasks import metric_mode

            value = float(logs[self.monitor])
            sign = 1.0 if metric_mode(self.monitor) == "min" else -1.0
            best = self.best is None or sign * value < sign * self.best
            if best:
                self.best = value
        self.save(trainer, best)

    def on_interrupt(self, trainer):
        self.save(trainer)  # the state between two steps: a resume continues exactly from here
        self.wait()

    def on_fit_end(self, trainer):
        self.wait()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")


class HistoryCSV(Callback):
    """Append each epoch's logs to ``history.csv`` (rewritten atomically, so it never tears)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer):
        if trainer.history:  # resumed: the checkpoint's history replaces a file lost or damaged since
            self.on_epoch_end(trainer, trainer.history[-1])

    def on_epoch_end(self, trainer, logs):
        rows = trainer.history
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]

        def write(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write, durable=False)  # rebuilt from the checkpoint's history if lost


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class EpochPrinter(Callback):
    """One line per epoch: the logs that matter, readable in a CI log."""

    def __init__(self, console=None):
        self.console = console

    def on_epoch_end(self, trainer, logs):
        parts = [f"epoch {logs['epoch']}/{trainer.cfg.epochs}"]
        parts += [f"{k} {_fmt(logs[k])}" for k in logs if k.startswith(("train_", "val_"))]
        parts += [f"lr {logs['lr']:.3g}", f"{logs['samples_per_s']:,.0f} samples/s", f"{logs['time_s']:.1f}s"]
        text = "  ".join(parts)
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)


class ProgressBar(Callback):
    """A rich progress bar with loss, the task's metric and samples/s (only on a terminal)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None
        self.task_id = None

    def on_fit_start(self, trainer):
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.start()

    def on_epoch_start(self, trainer):
        if self.progress is None:
            return
        if self.task_id is not None:
            self.progress.remove_task(self.task_id)
        self.task_id = self.progress.add_task(f"epoch {trainer.epoch + 1}/{trainer.cfg.epochs}",
                                              total=trainer.batches_per_epoch, stats="")
        self.started = time.perf_counter()
        self.samples = 0

    def on_batch_end(self, trainer, logs):
        if self.progress is None:
            return
        self.samples += logs["batch_size"]
        if "running" in logs:  # present every log_every steps, when values are synchronized
            rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
            stats = "  ".join(f"{k} {_fmt(v)}" for k, v in logs["running"].items())
            self.progress.update(self.task_id, completed=trainer.batch_in_epoch, stats=f"{stats}  {rate:,.0f} samples/s")

    def on_fit_end(self, trainer):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
