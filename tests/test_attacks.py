"""FGSM and PGD: known properties on a tiny trained digits CNN, and the `attack` verb's errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train

import layerwise
from layerwise.ops.attacks import fgsm, pgd
from layerwise.tools.attack import _inputs

EPS = 0.1


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small CNN on the bundled 8x8 digits (no augmentation), trained to well above chance."""
    runs = tmp_path_factory.mktemp("attack_runs")
    cfg = {"name": "digits", "data": {"source": "builtin", "name": "digits", "val_fraction": 0.1, "test_fraction": 0.2},
           "model": {"family": "cnn", "channels": [8, 16], "dropout": 0.0},
           "train": quick_train(epochs=4, lr=0.01, batch_size=64)}
    return layerwise.train(cfg, runs_dir=runs, quiet=True)


@pytest.fixture(scope="module")
def batch(digits_run):
    x, y, model_fn, _space = _inputs(digits_run, "test", 64, seed=0)
    return x, y, model_fn


def _accuracy(model_fn, x, y) -> float:
    with torch.no_grad():
        return float((model_fn(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("norm, eps", [("linf", EPS), ("l2", 1.0)])
def test_attacks_stay_in_the_eps_ball_and_the_pixel_range(batch, norm, eps):
    x, y, model_fn = batch
    for adv in (fgsm(model_fn, x, y, eps, norm),
                pgd(model_fn, x, y, eps, steps=5, norm=norm, generator=torch.Generator().manual_seed(0)),
                pgd(model_fn, x, torch.zeros_like(y), eps, steps=5, norm=norm, targeted=True)):
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5
        assert float(size.max()) > eps / 10  # the attack did move the inputs
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_attack_lowers_accuracy_and_pgd_is_at_least_as_strong_as_fgsm(batch):
    x, y, model_fn = batch
    clean = _accuracy(model_fn, x, y)
    under_fgsm = _accuracy(model_fn, fgsm(model_fn, x, y, EPS), y)
    under_pgd = _accuracy(model_fn, pgd(model_fn, x, y, EPS, steps=10, generator=torch.Generator().manual_seed(0)), y)
    assert clean > 0.8
    assert under_fgsm < clean
    assert under_pgd <= under_fgsm


def test_targeted_pgd_raises_the_target_class_rate(batch):
    x, y, model_fn = batch
    target = torch.full_like(y, 3)
    with torch.no_grad():
        before = float((model_fn(x).argmax(1) == 3).float().mean())
    adv = pgd(model_fn, x, target, 0.2, steps=10, targeted=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = float((model_fn(adv).argmax(1) == 3).float().mean())
    assert after > before + 0.3


def test_attack_run_curve_starts_at_clean_accuracy_and_writes_files(digits_run, tmp_path):
    result = digits_run.attack("fgsm", [0.05, 0.2], samples=120, target_class=None)
    clean = digits_run.evaluate(split="test")["accuracy"]
    assert result.eps == [0.0, 0.05, 0.2]
    # the 120 sampled test images are a subset of the full test split: the same on all of it
    full = layerwise.tools.attack.attack_run(digits_run, "fgsm", [0.05], samples=10_000, out_dir=tmp_path)
    assert full.clean_accuracy == pytest.approx(clean, abs=1e-6)
    assert result.accuracy[2] <= result.accuracy[1] <= result.accuracy[0]
    saved = json.loads((digits_run.path / "attack" / "attack.json").read_text())
    assert saved["accuracy"] == result.accuracy and saved["method"] == "fgsm"
    assert (digits_run.path / "attack" / "examples.png").stat().st_size > 1000
    assert (digits_run.path / "attack" / "robustness.png").stat().st_size > 1000


def test_cli_attack_targeted_pgd(digits_run, tmp_path):
    code, out, err = cli("attack", digits_run.path, "--method", "pgd", "--eps", "0.2", "--steps", "5",
                         "--targeted", "3", "--samples", "60", cwd=tmp_path)
    assert code == 0, err
    saved = json.loads((digits_run.path / "attack" / "attack.json").read_text())
    assert saved["target_class"] == "3" and saved["eps"] == [0.0, 0.2]
    assert saved["target_rate"][1] > saved["target_rate"][0] + 0.3
    assert "attack.json" in out


def test_cli_bad_method_is_one_line(digits_run, tmp_path):
    code, _out, err = cli("attack", digits_run.path, "--method", "deepfool", cwd=tmp_path)
    assert_one_line_error(code, err, "deepfool", "fgsm", "pgd")


def test_cli_attack_on_a_token_run_is_one_line(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    cfg = {"name": "chars", "data": {"source": "text", "path": str(tmp_path / "t.txt"), "block_size": 16,
                                     "val_fraction": 0.1, "test_fraction": 0.1},
           "model": {"family": "mingru", "hidden": 8, "layers": 1, "dropout": 0.0},
           "train": quick_train(epochs=1, batch_size=16)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    code, _out, err = cli("attack", run.path, "--method", "fgsm", cwd=tmp_path)
    assert_one_line_error(code, err, "tokens")
