"""Exact resume for every registered schedule, optimizer and multi-optimizer task, and resumes that
change settings: applied for real (train.lr, train.epochs) or refused in one line, never written to
config.yaml and ignored.

A run is interrupted at a step that is not a checkpoint (the process dies there: every step since
the last checkpoint is lost), resumed from its last checkpoint, and must end with the weights of
the uninterrupted run, bit for bit. (The SIGKILL of a real process is tests/test_train.py's.)
"""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import Killed, KillAt, assert_same_weights, weights

import layerwise
from layerwise.core.callback import Callback
from layerwise.core.errors import ConfigError
from layerwise.train.optim import OPTIMIZERS, SCHEDULERS


def _config(name: str, scheduler: str = "onecycle", optimizer: str = "adamw", **train) -> dict:
    return {"name": name, "data": {"source": "builtin", "name": "iris", "val_fraction": 0.2},
            "model": {"family": "mlp", "hidden": [16], "dropout": 0.1},
            "train": {"epochs": 4, "batch_size": 16, "lr": 0.02, "optimizer": optimizer,
                      "scheduler": {"name": scheduler, "step_size": 1, "patience": 0, "monitor": "val_loss"},
                      "checkpoint_every": 3, "progress": False, "device": "cpu", **train}}


def _killed_then_resumed(config: dict, kill_at: int, tmp_path, **resume_overrides):
    """Train ``config`` until step ``kill_at`` dies, then resume it to the end."""
    runs = tmp_path / "killed"
    with pytest.raises(Killed):
        layerwise.train(config, runs_dir=runs, quiet=True, callbacks=[KillAt(kill_at)])
    (run_dir,) = [d for d in runs.iterdir() if d.is_dir()]
    return layerwise.train(resume=run_dir, quiet=True, **resume_overrides)


CASES = [(s, "adamw") for s in SCHEDULERS.names()] + [("onecycle", o) for o in OPTIMIZERS.names() if o != "adamw"]


@pytest.mark.parametrize("scheduler,optimizer", CASES)
def test_resume_after_a_kill_is_exact(scheduler, optimizer, tmp_path):
    config = _config(f"{scheduler}-{optimizer}", scheduler, optimizer)
    straight = layerwise.train(config, runs_dir=tmp_path / "straight", quiet=True)
    # iris: 96 training rows, 6 steps an epoch; step 10 is in epoch 2, one step after the checkpoint at 9
    resumed = _killed_then_resumed(config, kill_at=10, tmp_path=tmp_path)
    assert_same_weights(weights(resumed.model), weights(straight.model))
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]


@pytest.mark.parametrize("family", ["gan", "diffusion"])
def test_multi_optimizer_and_ema_tasks_resume_exactly(family, tmp_path):
    model = {"gan": {"family": "gan", "hidden": [16], "latent": 4},
             "diffusion": {"family": "diffusion", "hidden": [16], "timesteps": 20,
                           "sample_steps": 2}}[family]
    config = {**_config(family), "model": model}
    straight = layerwise.train(config, runs_dir=tmp_path / "straight", quiet=True)
    resumed = _killed_then_resumed(config, kill_at=10, tmp_path=tmp_path)
    assert_same_weights(weights(resumed.model), weights(straight.model))


def test_resume_with_a_lower_lr_really_uses_it(tmp_path):
    """The NaN guard's advice ("lower train.lr, then --resume") must work: the new rate is applied to
    the optimizer and its schedule, recorded in metrics.json, and config.yaml says it."""
    config = _config("lr", "cosine", epochs=3)
    straight = layerwise.train(config, runs_dir=tmp_path / "straight", quiet=True)
    resumed = _killed_then_resumed(config, kill_at=8, tmp_path=tmp_path, train__lr=0.002)
    before, after = straight.history, resumed.history
    assert after[0]["lr"] == pytest.approx(before[0]["lr"])  # epoch 1 ran before the kill
    for b, a in zip(before[1:], after[1:]):  # the rest of the cosine curve, ten times lower
        assert a["lr"] == pytest.approx(b["lr"] / 10, rel=1e-6)
    assert yaml.safe_load((resumed.path / "config.yaml").read_text())["train"]["lr"] == 0.002
    (change,) = resumed.metrics["training"]["resumes"]
    assert change["changed"]["train.lr"] == [0.02, 0.002] and change["step"] == 6


def test_resume_refuses_keys_it_cannot_honour_and_leaves_the_config(tmp_path):
    run = layerwise.train(_config("refuse", "none", epochs=1), runs_dir=tmp_path, quiet=True)
    saved = (run.path / "config.yaml").read_text()
    for override, key in (({"train__batch_size": 32}, "train.batch_size"),
                          ({"train__optimizer": "sgd"}, "train.optimizer"),
                          ({"model__hidden": [8]}, "model.hidden"),
                          ({"train__scheduler__name": "cosine"}, "train.scheduler.name")):
        with pytest.raises(ConfigError, match=f"--resume: {key} cannot change when a run resumes"):
            layerwise.train(resume=run.path, quiet=True, **override)
        assert (run.path / "config.yaml").read_text() == saved


def test_a_schedule_fixed_by_the_length_refuses_more_epochs_and_the_config_keeps_its_length(tmp_path):
    run = layerwise.train(_config("length", "onecycle", epochs=1), runs_dir=tmp_path, quiet=True)
    saved = (run.path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="cannot be stretched"):
        layerwise.train(resume=run.path, quiet=True, train__epochs=3)
    assert (run.path / "config.yaml").read_text() == saved


def test_extending_a_run_without_a_length_schedule_is_applied(tmp_path):
    run = layerwise.train(_config("extend", "step", epochs=2), runs_dir=tmp_path, quiet=True)
    resumed = layerwise.train(resume=run.path, quiet=True, train__epochs=3)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert yaml.safe_load((run.path / "config.yaml").read_text())["train"]["epochs"] == 3
    assert resumed.metrics["training"]["resumes"][0]["changed"] == {"train.epochs": [2, 3]}
    assert torch.isfinite(torch.cat([p.flatten() for p in resumed.model.parameters()])).all()


# -- divergence: what the NaN guard did not see ----------------------------------------------------


def test_infinite_numbers_are_refused_by_the_config(tmp_path):
    for key, value in (("lr", float("inf")), ("lr", float("nan")), ("grad_clip", float("inf"))):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            layerwise.train(_config("inf", **{key: value}), runs_dir=tmp_path, quiet=True)
    assert not (tmp_path / "inf").exists() and not list(tmp_path.glob("inf-*"))


class PoisonWeights(Callback):
    """Sets one weight to NaN at the end of an epoch, after the loss of that epoch was computed."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_batch_end(self, trainer, logs) -> None:
        if trainer.epoch + 1 == self.epoch and trainer.batch_in_epoch == trainer.batches_per_epoch:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")


@pytest.mark.parametrize("val_fraction,noticed", [(0.2, "the validation loss became nan"),
                                                  (0.0, "the model's weights became non-finite")])
def test_non_finite_weights_stop_the_run_and_the_last_checkpoint_stays_good(tmp_path, val_fraction, noticed):
    from layerwise.core.errors import TrainingDivergedError
    from layerwise.train.checkpoint import load_checkpoint

    config = _config("poison", "none", epochs=3, checkpoint_every=None)
    config["data"]["val_fraction"] = val_fraction  # without validation, the weights check must notice
    with pytest.raises(TrainingDivergedError, match=f"{noticed}.*lower train.lr"):
        layerwise.train(config, runs_dir=tmp_path, quiet=True, callbacks=[PoisonWeights(epoch=2)])
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1  # epoch 2's poisoned weights were never written over epoch 1's
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_keep_last_and_keep_best_checkpoints(tmp_path):
    config = _config("kept", "none", epochs=4, checkpoint_every=None,
                     checkpoints={"keep_last": 2, "keep_best": True, "monitor": "val_loss"})
    run = layerwise.train(config, runs_dir=tmp_path, quiet=True)
    folder = run.path / "checkpoints"
    steps = sorted(p.name for p in folder.glob("step-*.pt"))
    assert steps == ["step-00000018.pt", "step-00000024.pt"]  # 6 steps an epoch: the last two epochs
    from layerwise.train.checkpoint import load_checkpoint

    best_epoch = min(run.history, key=lambda r: r["val_loss"])["epoch"]
    assert load_checkpoint(folder / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(folder / "step-00000024.pt")["global_step"] == 24
