"""Adversarial training (train.adversarial): validation, the attacked batches, metrics, report, resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train, run_dirs, tiny_mlp, write_yaml

import layerwise
from layerwise.runs.config import load_config
from layerwise.runs.training import loaders, prepare

EPS = 0.1


def _digits(adversarial: dict | None, epochs: int = 3) -> dict:
    """A small CNN on the bundled 8x8 digits (no augmentation, no dropout)."""
    train = quick_train(epochs=epochs, lr=0.01, batch_size=64)
    if adversarial is not None:
        train["adversarial"] = adversarial
    return {"name": "digits", "data": {"source": "builtin", "name": "digits", "val_fraction": 0.1, "test_fraction": 0.2},
            "model": {"family": "cnn", "channels": [8, 16], "dropout": 0.0}, "train": train}


@pytest.fixture(scope="module")
def adv_run(tmp_path_factory):
    cfg = _digits({"eps": EPS, "steps": 3, "ratio": 0.5, "eval_samples": 200})
    return layerwise.train(cfg, runs_dir=tmp_path_factory.mktemp("adv_runs"), quiet=True)


def _wrapper(raw: dict):
    """The prepared (wrapped) task and one training batch, as the loop would get them."""
    prepared = prepare(load_config(raw))
    train_loader, _ = loaders(prepared.bundle, prepared.config, torch.device("cpu"))
    x, y = next(iter(train_loader))
    return prepared.task, prepared.model, x, y


# -- validation: one line, exit 2, no run directory --------------------------------------------


@pytest.mark.parametrize("key, value, fragment", [("eps", 0, "greater than 0"), ("ratio", 0, "greater than 0"),
                                                  ("ratio", 1.5, "less than or equal")])
def test_bad_values_are_one_line_errors(tmp_path, key, value, fragment):
    config = write_yaml(tmp_path / "c.yaml", _digits({"eps": EPS, key: value}, epochs=1))
    code, _out, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_one_line_error(code, err, f"train.adversarial.{key}", fragment)
    assert run_dirs(tmp_path / "runs") == []


def test_token_run_is_refused_before_any_file(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    config = write_yaml(tmp_path / "c.yaml", {
        "data": {"source": "text", "path": str(tmp_path / "t.txt"), "block_size": 16},
        "model": {"family": "mingru", "hidden": 8, "layers": 1},
        "train": quick_train(epochs=1, adversarial={"eps": EPS})})
    code, _out, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_one_line_error(code, err, "train.adversarial", "tokens")
    assert run_dirs(tmp_path / "runs") == []


def test_regression_run_is_refused_before_any_file(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"data": {"source": "builtin", "name": "diabetes"}, "model": tiny_mlp(),
                                              "train": quick_train(epochs=1, adversarial={"eps": EPS})})
    code, _out, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_one_line_error(code, err, "train.adversarial", "classification", "regression")
    assert run_dirs(tmp_path / "runs") == []


# -- the attacked batches ----------------------------------------------------------------------


def test_image_batch_stays_in_the_eps_ball_and_the_pixel_range():
    task, model, x, y = _wrapper(_digits({"eps": EPS, "steps": 5}))
    space = task.space
    adv = task.perturb(model.train(), x, y)
    assert model.training  # the attack ran in eval mode and gave the model back in train mode
    clean_pixels, adv_pixels = space.from_model(x), space.from_model(adv)
    delta = (adv_pixels - clean_pixels).abs().flatten(1).amax(1)
    assert float(delta.max()) <= EPS + 1e-5
    assert float(delta.min()) > EPS / 2  # every sample was moved
    assert float(adv_pixels.min()) >= -1e-6 and float(adv_pixels.max()) <= 1 + 1e-6
    assert all(p.grad is None for p in model.parameters())  # gradients of the input only


def test_tabular_batch_stays_in_the_training_range():
    task, model, x, y = _wrapper({"data": {"source": "builtin", "name": "iris"}, "model": tiny_mlp(),
                                  "train": quick_train(adversarial={"eps": 0.5, "norm": "l2"})})
    adv = task.perturb(model, x, y)
    assert float((adv - x).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float((adv - x).norm(dim=1).max()) > 0.1
    train = task.space.preprocessor.batch(prepare(load_config({"data": {"source": "builtin", "name": "iris"},
                                                               "model": tiny_mlp()})).bundle.train.x)
    assert bool((adv >= train.amin(0) - 1e-6).all()) and bool((adv <= train.amax(0) + 1e-6).all())


def test_ratio_one_half_perturbs_half_the_batch():
    task, model, x, y = _wrapper(_digits({"eps": EPS, "steps": 2, "ratio": 0.5}))
    mixed, n = task.mix(model, x, y)
    assert n == len(x) // 2
    moved = (mixed != x).flatten(1).any(1)
    assert bool(moved[:n].all()) and not bool(moved[n:].any())
    ctx = SimpleNamespace(trainer=SimpleNamespace(epoch=0))  # what the loop hands a training step
    out = task.training_step(model, (x, y), ctx)
    assert int(out.sums["adv_count"]) == n and "accuracy" in out.sums


def test_start_epoch_trains_on_clean_batches_first():
    task, model, x, y = _wrapper(_digits({"eps": EPS, "start_epoch": 1}))
    out = task.training_step(model, (x, y), SimpleNamespace(trainer=SimpleNamespace(epoch=0)))
    assert "adv_count" not in out.sums
    out = task.training_step(model, (x, y), SimpleNamespace(trainer=SimpleNamespace(epoch=1)))
    assert int(out.sums["adv_count"]) == len(x)


# -- a trained run -----------------------------------------------------------------------------


def test_history_metrics_and_report(adv_run):
    history = adv_run.history
    assert len(history) == 3 and all(0 <= row["train_adv_accuracy"] <= 1 for row in history)
    assert history[-1]["train_adv_accuracy"] > history[0]["train_adv_accuracy"]
    robust = json.loads((adv_run.path / "metrics.json").read_text())["robustness"]
    assert robust["method"] == "pgd" and robust["eps"] == EPS and robust["steps"] == 3 and robust["samples"] == 200
    assert 0 < robust["test_robust_accuracy"] < robust["test_clean_accuracy"]
    report = (adv_run.path / "report.html").read_text()
    assert "Robustness" in report and "robust accuracy" in report


def test_adversarial_training_beats_standard_training_under_pgd(adv_run, tmp_path):
    standard = layerwise.train(_digits(None), runs_dir=tmp_path, quiet=True)
    attacked = {name: run.attack("pgd", [EPS], steps=7, samples=150).accuracy[1]
                for name, run in (("standard", standard), ("adversarial", adv_run))}
    assert attacked["adversarial"] > attacked["standard"] + 0.15, attacked
    # `attack` re-wrote the report: its Robustness section now shows the curve too
    report = (standard.path / "report.html").read_text()
    assert "Robustness" in report and "robustness curve" in report


def test_resume_continues_exactly(tmp_path):
    """2 + 2 epochs give the weights of 4 straight: the attacks' random starts resume too."""
    def raw(epochs):
        return {"data": {"source": "builtin", "name": "iris"}, "model": tiny_mlp(),
                "train": quick_train(epochs=epochs, adversarial={"eps": 0.3, "steps": 2, "eval_samples": 0})}

    run = layerwise.train(raw(2), runs_dir=tmp_path / "a", quiet=True)
    resumed = layerwise.train(resume=run.path, quiet=True, train__epochs=4)
    straight = layerwise.train(raw(4), runs_dir=tmp_path / "b", quiet=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert "train_adv_accuracy" in resumed.history[-1]
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert "robustness" not in resumed.metrics  # eval_samples 0 skips the final attack


def test_bf16_autocast_and_gradient_accumulation(tmp_path):
    raw = {"data": {"source": "builtin", "name": "iris"}, "model": tiny_mlp(),
           "train": quick_train(epochs=2, precision="bf16", accumulate=2, batch_size=16,
                                adversarial={"eps": 0.3, "steps": 2, "ratio": 0.5, "eval_samples": 30})}
    run = layerwise.train(raw, runs_dir=tmp_path, quiet=True)
    assert all(0 <= row["train_adv_accuracy"] <= 1 and row["train_loss"] == row["train_loss"] for row in run.history)
    assert run.metrics["training"]["steps"] == 2 * -(-len(run.data.train) // 32)  # one step per 2 micro-batches
    assert 0 <= run.metrics["robustness"]["test_robust_accuracy"] <= 1
