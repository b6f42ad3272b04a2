"""Resuming a run with changed settings: what a resume can honour, and the record of what changed.

A checkpoint holds the optimizer state, the schedule, the sampler position and the model: a key
baked into one of them (batch size, optimizer, schedule, seed, data, model, task) cannot change on
resume without the run silently keeping the old value, so such a change is refused in one line. The
keys below are honoured for real: the run's length and budget (a schedule fixed by the run's length
refuses a new one when the loop starts), the learning rate (every optimizer's rates and schedules
are rescaled, see ``Schedule.scale_lr``), early stopping, checkpointing and evaluation. The changed
config is written when the loop has accepted it, and ``metrics.json`` lists every resume's changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.callback import Callback
from ..core.config import ExperimentConfig
from ..core.errors import ConfigError
from ..core.io import atomic_write

__all__ = ["RESUMABLE_KEYS", "RecordResume", "resume_changes"]

# training keys a resume can change, and honours: the length and budget of the run (a schedule fixed
# by the run's length refuses a new one), the learning rate (every optimizer's rate and schedule are
# rescaled), early stopping, checkpointing, progress, the device, energy accounting and evaluation.
# Anything else was baked into the optimizer state, the sampler position, the schedule, the data or
# the model, and a resume would silently keep the old value.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.max_time", "train.lr", "train.early_stopping",
                  "train.checkpoint_every", "train.checkpoints", "train.progress", "train.device", "train.grad_clip", "train.energy",
                  "train.energy_country", "evaluate")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: data}


def resume_changes(saved: ExperimentConfig, new: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """The keys a resume changes, ``{key: (old, new)}``; a one-line ConfigError for one it cannot honour."""
    before, after = _flatten(saved.to_dict()), _flatten(new.to_dict())
    changed = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    refused = [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)]
    if refused:
        key = refused[0]
        raise ConfigError(f"--resume: {key} cannot change when a run resumes ({changed[key][0]!r} -> "
                          f"{changed[key][1]!r}): the checkpoint's optimizer, schedule, data or model were made for "
                          f"the old value; start a new run instead. A resume can change: {', '.join(RESUMABLE_KEYS)}")
    return changed


class RecordResume(Callback):
    """Writes the changed config and notes the change in the trainer's resume log, once fit() accepted it."""

    def __init__(self, path: Path, cfg: ExperimentConfig, changes: dict[str, tuple[Any, Any]]):
        self.path, self.cfg, self.changes = path, cfg, changes

    def on_fit_start(self, trainer) -> None:
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(self.cfg.to_yaml()))
        trainer.resumes.append({"step": trainer.global_step, "epoch": trainer.epoch,
                                "changed": {k: [old, new] for k, (old, new) in self.changes.items()}})
