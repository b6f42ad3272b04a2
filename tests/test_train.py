"""The training loop: exact gradient accumulation, exact resume after SIGKILL, the NaN guard, early
stopping, schedules, optimizers, max_steps, determinism, bf16 and class weights."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (assert_one_line_error, assert_same_weights, cli, cli_command, cli_env, quick_train, run_dirs, tiny_mlp,
                     weights, write_yaml)
from torch import nn

import layerwise
from layerwise import TrainingDivergedError, load_config
from layerwise.runs.training import loaders, prepare
from layerwise.train import Callback, EarlyStopping, Trainer, load_checkpoint
from layerwise.train.optim import SCHEDULERS, make_optimizer, make_schedule


def fit(raw: dict, callbacks=(), val: bool = True):
    """Prepare an experiment and run the Trainer on it directly (no run directory, no report)."""
    cfg = load_config(raw)
    prepared = prepare(cfg)
    train_loader, val_loader = loaders(prepared.bundle, prepared.config, torch.device("cpu"))
    trainer = Trainer(prepared.model, prepared.task, prepared.config.train, callbacks=list(callbacks),
                      device=torch.device("cpu"), eval_cfg=prepared.config.evaluate)
    history = trainer.fit(train_loader, val_loader if val else None)
    return trainer, history, prepared


def iris(train: dict | None = None, **sections) -> dict:
    return {"data": {"name": "iris"}, "model": tiny_mlp(), "train": quick_train(**(train or {})), **sections}


# -- gradient accumulation -------------------------------------------------------------------


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_accumulation_equals_the_large_batch(class_weight):
    """accumulate=4 x batch 7 on 108 samples: windows of 28, 28, 28 and 24 samples (the last
    window's micro-batches are 7, 7, 7, 3); each step must equal SGD on that window's mean loss."""
    raw = {"data": {"name": "iris", "val_fraction": 0.1, "test_fraction": 0.2}, "model": tiny_mlp(hidden=[8]),
           "train": quick_train(epochs=1, batch_size=7, accumulate=4, optimizer="sgd", momentum=0.0, lr=0.5,
                                class_weight=class_weight)}
    cfg = load_config(raw)
    prepared = prepare(cfg)
    bundle, task = prepared.bundle, prepared.task
    assert len(bundle.train) == 108 and 108 % 28 != 0
    reference = {k: v.clone() for k, v in prepared.model.state_dict().items()}

    train_loader, _ = loaders(bundle, prepared.config, torch.device("cpu"))
    trainer = Trainer(prepared.model, task, prepared.config.train, device=torch.device("cpu"))
    trainer.fit(train_loader)
    assert trainer.global_step == 4

    # by hand: the same batches, concatenated four at a time, one SGD step on the window's mean loss
    manual = layerwise.models.build_model(prepared.config.model, bundle.spec)
    manual.load_state_dict(reference)
    train_loader.set_epoch(0)
    batches = list(train_loader)
    assert [len(y) for _, y in batches][-2:] == [7, 3]
    weight = task.weight
    for start in range(0, len(batches), 4):
        x = torch.cat([b[0] for b in batches[start:start + 4]])
        y = torch.cat([b[1] for b in batches[start:start + 4]])
        manual.zero_grad()
        F.cross_entropy(manual(x), y, weight=weight).backward()  # the weighted mean, as PyTorch defines it
        with torch.no_grad():
            for p in manual.parameters():
                p -= 0.5 * p.grad
    for k, v in manual.state_dict().items():
        assert torch.allclose(prepared.model.state_dict()[k], v, atol=1e-6, rtol=1e-5), k


# -- resume after SIGKILL --------------------------------------------------------------------


RESUME_CONFIG = {
    "name": "resume",
    "data": {"name": "digits", "augment": {"shift": 0.1}},
    "model": {"family": "mlp", "hidden": [32], "dropout": 0.2},
    "train": {"epochs": 4, "batch_size": 32, "checkpoint_every": 5, "progress": False, "device": "cpu",
              "scheduler": "cosine", "optimizer": "adamw"},
}


def _kill_and_resume(tmp_path, scheduler: str) -> dict:
    """Train one config twice side by side; SIGKILL one once its checkpoint has been rewritten, then
    resume it. Returns what the test checks (or the first failure, as text)."""
    tmp_path = tmp_path / scheduler
    tmp_path.mkdir()
    config = write_yaml(tmp_path / "resume.yaml",
                        {**RESUME_CONFIG, "train": {**RESUME_CONFIG["train"],  # step and plateau act every epoch
                                                    "scheduler": {"name": scheduler, "step_size": 1, "patience": 0}}})
    whole_runs, killed_runs = tmp_path / "whole", tmp_path / "killed"
    # the uninterrupted run and the one we kill run side by side, with the same environment
    whole = subprocess.Popen(cli_command("train", config, "--runs-dir", whole_runs, "--quiet"), cwd=tmp_path,
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(cli_command("train", config, "--runs-dir", killed_runs, "--quiet"), cwd=tmp_path,
                              env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        checkpoint = None
        first_write = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and victim.poll() is None:
            found = [d / "checkpoints" / "last.pt" for d in run_dirs(killed_runs)]
            if found and found[0].exists():
                checkpoint = found[0]
                stat = checkpoint.stat()
                version = (stat.st_ino, stat.st_mtime_ns)  # each atomic write renames a new file in
                if first_write is None:
                    first_write = version
                elif version != first_write:
                    break  # rewritten at least once: training is well under way
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        killed = victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    result = {"killed": killed, "checkpoint": checkpoint}
    if checkpoint is not None:
        run = checkpoint.parent.parent
        result.update(run=run, model_before_resume=(run / "model.safetensors").exists(),
                      state=load_checkpoint(checkpoint), resume=cli("train", "--resume", run, "--quiet", cwd=tmp_path))
    out, err = whole.communicate(timeout=600)
    result.update(whole_code=whole.returncode, whole_err=err, whole_run=(run_dirs(whole_runs) or [None])[0])
    return result


@pytest.fixture(scope="module")
def sigkilled(request, tmp_path_factory) -> dict:
    """Every selected schedule's kill-and-resume, three schedules (six processes) at a time."""
    from concurrent.futures import ThreadPoolExecutor

    selected = sorted({item.callspec.params["scheduler"] for item in request.session.items
                       if getattr(item, "originalname", "") == "test_resume_after_sigkill_is_exact"})
    base = tmp_path_factory.mktemp("sigkill")
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(selected, pool.map(lambda name: _kill_and_resume(base, name), selected)))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))  # onecycle: the default config's schedule
def test_resume_after_sigkill_is_exact(scheduler, sigkilled):
    from safetensors.torch import load_file

    result = sigkilled[scheduler]
    assert result["killed"] == -signal.SIGKILL, "the run finished before it could be killed"
    assert result["checkpoint"] is not None
    run = result["run"]
    assert not result["model_before_resume"]
    steps_per_epoch = math.ceil(1294 / 32)
    assert 0 < result["state"]["global_step"] < RESUME_CONFIG["train"]["epochs"] * steps_per_epoch
    code, out, err = result["resume"]
    assert code == 0, err
    assert result["whole_code"] == 0, result["whole_err"]

    whole_run = result["whole_run"]
    expected, resumed = load_file(whole_run / "model.safetensors"), load_file(run / "model.safetensors")
    assert_same_weights(expected, resumed)
    hist_a = layerwise.load_run(whole_run).history
    hist_b = layerwise.load_run(run).history
    assert [r["train_loss"] for r in hist_a] == [r["train_loss"] for r in hist_b]
    assert [r["val_loss"] for r in hist_a] == [r["val_loss"] for r in hist_b]
    assert [r["step"] for r in hist_b] == [steps_per_epoch * (e + 1) for e in range(4)]


def test_resume_of_a_finished_run_in_process(tmp_path):
    """--resume continues from the last checkpoint; with more epochs it trains on from there."""
    raw = iris({"epochs": 2})
    run = layerwise.train(raw, runs_dir=tmp_path, quiet=True)
    resumed = layerwise.train(resume=run.path, quiet=True, train__epochs=4)
    assert resumed.path == run.path
    history = resumed.history
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    straight = layerwise.train(iris({"epochs": 4}), runs_dir=tmp_path / "straight", quiet=True)
    # the cosine-free default schedule ("none") makes 2 + 2 epochs identical to 4 straight epochs
    assert_same_weights(weights(resumed.model), weights(straight.model))


# -- the NaN guard ---------------------------------------------------------------------------


class NaNAfter(nn.Module):
    """A linear model whose outputs turn to NaN after ``after`` training forward passes."""

    def __init__(self, after: int):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.after = after
        self.calls = 0

    def forward(self, x):
        out = self.linear(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path):
    # 108 training samples, batches of 8: 14 steps per epoch; NaN from step 21 (mid epoch 2)
    raw = iris({"batch_size": 8, "epochs": 5, "checkpoint_every": 2, "optimizer": "sgd", "lr": 0.01})
    with pytest.raises(TrainingDivergedError, match=r"(?i)nan.*epoch 2") as info:
        layerwise.train(raw, model=NaNAfter(after=20), runs_dir=tmp_path, quiet=True)
    assert "last good checkpoint" in str(info.value)
    (run,) = run_dirs(tmp_path)
    assert not (run / "model.safetensors").exists()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["global_step"] <= 20
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), f"checkpoint holds a diverged {name}"


def test_nan_guard_huge_learning_rate(tmp_path):
    with pytest.raises(TrainingDivergedError, match="(?i)nan|inf"):
        layerwise.train(iris({"optimizer": "sgd", "lr": 1e6, "epochs": 3}), runs_dir=tmp_path, quiet=True)


def test_nan_guard_cli_exit_code(tmp_path, run_cli, runs_dir):
    (tmp_path / "nan_net.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(4, 3)\n\n"
        "    def forward(self, x):\n"
        "        return self.linear(x) * (float('nan') if self.training else 1.0)\n"
    )
    config = write_yaml(tmp_path / "nan.yaml", {"data": {"name": "iris"},
                                                "model": {"family": "python", "target": "nan_net.py:Net"},
                                                "train": quick_train(epochs=2)})
    code, out, err = run_cli("train", config, "--runs-dir", runs_dir, "--quiet")
    line = assert_one_line_error(code, err, "training loss became nan")
    assert "lower train.lr" in line
    assert run_dirs(runs_dir) == []  # nothing worth keeping: no checkpoint was ever written


# -- early stopping --------------------------------------------------------------------------


class Snapshots(Callback):
    """Keeps the weights at the end of every epoch."""

    def __init__(self):
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer, logs):
        self.by_epoch[logs["epoch"]] = weights(trainer.model)


def test_early_stopping_stops_and_restores_the_best(tmp_path):
    snapshots = Snapshots()
    # min_delta larger than any change: epoch 1 stays the best, patience 2 stops after epoch 3
    raw = iris({"epochs": 20, "lr": 0.01, "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 100}})
    run = layerwise.train(raw, runs_dir=tmp_path, quiet=True, callbacks=[snapshots])
    assert len(run.history) == 3 < 20
    training = run.metrics["training"]
    assert training["restored_best_epoch"] == 1
    assert "early stopping" in training["stop_reason"]
    assert_same_weights(weights(run.model), snapshots.by_epoch[1])
    assert not all(torch.equal(snapshots.by_epoch[3][k], v) for k, v in snapshots.by_epoch[1].items())


def test_early_stopping_on_an_accuracy_maximizes():
    raw = iris({"epochs": 30, "lr": 0.05, "early_stopping": {"monitor": "val_accuracy", "patience": 3}})
    trainer, history, _ = fit(raw, callbacks=[EarlyStopping("val_accuracy", patience=3)])
    stopper = trainer.callbacks[0]
    assert stopper.mode == "max"
    assert stopper.best == max(row["val_accuracy"] for row in history)


# -- schedules -------------------------------------------------------------------------------


def _lrs(history) -> list[float]:
    return [row["lr"] for row in history]


def test_step_schedule():
    _, history, _ = fit(iris({"epochs": 4, "lr": 0.08, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}))
    assert _lrs(history) == pytest.approx([0.08, 0.04, 0.02, 0.01])


def test_cosine_schedule_decays_to_min_lr():
    _, history, _ = fit(iris({"epochs": 5, "lr": 0.1, "scheduler": {"name": "cosine", "min_lr": 0.001}}))
    lrs = _lrs(history)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.001)


def test_onecycle_schedule_rises_then_falls():
    _, history, _ = fit(iris({"epochs": 8, "lr": 0.01, "scheduler": {"name": "onecycle", "max_lr": 0.2,
                                                                      "pct_start": 0.25}}))
    lrs = _lrs(history)
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(0.2, rel=0.05)
    assert 0 < peak < len(lrs) - 1
    assert lrs[-1] < 0.001


def test_warmup_cosine_schedule():
    trainer, history, _ = fit(iris({"epochs": 6, "lr": 0.1, "batch_size": 16,
                                    "scheduler": {"name": "warmup_cosine", "warmup_fraction": 0.3, "min_lr": 0.0}}))
    lrs = _lrs(history)
    assert lrs[0] < lrs[1]  # still warming up after the first epoch
    assert max(lrs) <= 0.1 + 1e-9
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_plateau_schedule_decays_when_the_metric_stalls():
    model = nn.Linear(2, 2)
    cfg = load_config({"train": {"lr": 0.1, "scheduler": {"name": "plateau", "patience": 1, "factor": 0.5,
                                                          "monitor": "val_loss"}}}).train
    opt = make_optimizer(model.parameters(), cfg)
    schedule = make_schedule(opt, cfg, total_steps=10, steps_per_epoch=1)
    seen = []
    for _ in range(5):
        schedule.step_epoch({"val_loss": 1.0})
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_plateau_schedule_in_training():
    _, history, _ = fit(iris({"epochs": 4, "scheduler": {"name": "plateau", "monitor": "val_accuracy"}}))
    assert len(history) == 4 and all(row["lr"] > 0 for row in history)
    assert "val_accuracy" in history[0]


# -- optimizers ------------------------------------------------------------------------------


def _initial_loss(prepared) -> float:
    model, x, y = prepared.model, prepared.bundle.train.x, prepared.bundle.train.y
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


@pytest.mark.parametrize("optimizer, extra", [("sgd", {"nesterov": True, "lr": 0.05}), ("adam", {"lr": 0.01}),
                                              ("adamw", {"lr": 0.01, "weight_decay": 0.01}),
                                              ("rmsprop", {"lr": 0.005})])
def test_optimizer_reduces_the_loss(optimizer, extra):
    raw = iris({"epochs": 15, "optimizer": optimizer, **extra})
    prepared = prepare(load_config(raw))
    before = _initial_loss(prepared)
    train_loader, _ = loaders(prepared.bundle, prepared.config, torch.device("cpu"))
    trainer = Trainer(prepared.model, prepared.task, prepared.config.train, device=torch.device("cpu"))
    trainer.fit(train_loader)
    after = _initial_loss(prepared)
    assert after < 0.5 * before, (before, after)
    opt = trainer.optimizers["main"]
    assert type(opt).__name__.lower() == optimizer
    if optimizer == "sgd":
        assert opt.param_groups[0]["nesterov"] is True
    # weight decay applies to weight matrices only, never to biases
    assert opt.param_groups[0]["weight_decay"] == prepared.config.train.weight_decay
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in opt.param_groups[1]["params"])


# -- max_steps, determinism, precision, class weights ----------------------------------------


@pytest.mark.parametrize("accumulate", [1, 3])
def test_max_steps_stops_at_exactly_that_many_steps(accumulate):
    trainer, history, _ = fit(iris({"epochs": 50, "batch_size": 16, "max_steps": 11, "accumulate": accumulate,
                                    "optimizer": "adam"}))
    assert trainer.global_step == 11
    opt = trainer.optimizers["main"]
    assert all(int(state["step"]) == 11 for state in opt.state.values())  # Adam counts its own steps
    steps_per_epoch = math.ceil(math.ceil(108 / 16) / accumulate)
    assert len(history) == math.ceil(11 / steps_per_epoch) < 50


def test_same_seed_gives_identical_weights():
    raw = {"data": {"name": "digits", "limit": 300, "augment": {"shift": 0.1, "noise": 0.05}},
           "model": {"family": "mlp", "hidden": [32], "dropout": 0.3}, "train": quick_train(epochs=2, seed=7)}
    first, _, _ = fit(raw)
    second, _, _ = fit(raw)
    assert_same_weights(weights(first.model), weights(second.model))
    raw["train"]["seed"] = 8
    third, _, _ = fit(raw)
    assert not torch.equal(weights(first.model)["head.weight"], weights(third.model)["head.weight"])


def test_bf16_precision_trains():
    raw = iris({"epochs": 6, "lr": 0.01, "precision": "bf16"})
    _, history, _ = fit(raw)
    losses = [row["train_loss"] for row in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert math.isfinite(history[-1]["val_loss"])


def test_balanced_class_weights(make_npz):
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(0)
    y = np.array([0] * 150 + [1] * 30 + [2] * 20)
    x = rng.normal(size=(200, 3)).astype(np.float32) + y[:, None]
    path = make_npz("imb.npz", x=x, y=y)
    raw = {"data": {"source": "npz", "path": str(path)}, "model": tiny_mlp(),
           "train": quick_train(epochs=3, class_weight="balanced")}
    trainer, history, prepared = fit(raw)
    train_y = prepared.bundle.train.y.numpy()
    expected = compute_class_weight("balanced", classes=np.arange(3), y=train_y)
    assert torch.allclose(prepared.task.weight, torch.tensor(expected, dtype=torch.float32))
    # the loss the task reports is the weighted mean PyTorch computes
    out = torch.randn(10, 3)
    target = torch.tensor([0, 0, 1, 2, 2, 0, 1, 0, 0, 2])
    mean_loss, count = prepared.task.loss(out, target)
    assert float(mean_loss) == pytest.approx(float(F.cross_entropy(out, target, weight=prepared.task.weight)))
    assert float(count) == pytest.approx(float(prepared.task.weight[target].sum()))  # what the mean divides by
    assert all(math.isfinite(row["train_loss"]) for row in history)


def test_explicit_class_weights_and_label_smoothing():
    trainer, _, prepared = fit(iris({"epochs": 1, "class_weight": [1.0, 2.0, 3.0], "label_smoothing": 0.1}))
    out = torch.randn(6, 3)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    mean_loss, count = prepared.task.loss(out, target)
    weight = torch.tensor([1.0, 2.0, 3.0])
    expected = F.cross_entropy(out, target, weight=weight, label_smoothing=0.1)
    assert float(mean_loss) == pytest.approx(float(expected), rel=1e-5)


def test_grad_clip_bounds_the_update():
    raw = iris({"epochs": 1, "batch_size": 200, "optimizer": "sgd", "momentum": 0.0, "lr": 1.0, "grad_clip": 1e-3})
    prepared = prepare(load_config(raw))
    before = weights(prepared.model)
    train_loader, _ = loaders(prepared.bundle, prepared.config, torch.device("cpu"))
    Trainer(prepared.model, prepared.task, prepared.config.train, device=torch.device("cpu")).fit(train_loader)
    delta = torch.cat([(prepared.model.state_dict()[k] - v).flatten() for k, v in before.items()])
    assert float(delta.norm()) == pytest.approx(1e-3, rel=1e-3)  # one step of lr 1 on a clipped gradient


def test_max_time_stops_training_at_the_budget(tmp_path):
    cfg = quick_train(epochs=1000, max_time=1.0)
    started = time.perf_counter()
    run = layerwise.train({"data": {"name": "iris"}, "model": tiny_mlp(), "train": cfg}, runs_dir=tmp_path, quiet=True)
    assert time.perf_counter() - started < 30
    assert run.metrics["training"]["stop_reason"] == "max_time"
    assert 1 <= run.metrics["training"]["epochs_run"] < 1000
