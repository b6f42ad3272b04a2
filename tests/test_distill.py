"""Knowledge distillation: the loss against its definition, a frozen teacher inside the one loop, an
end-to-end distilled run with its comparison, and the one-line errors of the CLI verb."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, cli, quick_train, run_dirs, tiny_mlp, write_yaml

import layerwise
from layerwise.core.errors import ConfigError
from layerwise.runs.config import load_config
from layerwise.runs.training import prepare
from layerwise.tasks.distillation import TeacherCallback, distillation_loss


def _logits(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=gen) * 3, torch.randn(16, 5, generator=gen) * 3, \
        torch.randint(0, 5, (16,), generator=gen)


def test_alpha_zero_is_exactly_cross_entropy():
    student, teacher, y = _logits()
    assert torch.equal(distillation_loss(student, teacher, y, 4.0, 0.0), F.cross_entropy(student, y))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_alpha_one_is_t_squared_kl(temperature):
    student, teacher, y = _logits(1)
    p_t = torch.softmax(teacher / temperature, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / temperature, dim=1))).sum(1).mean()
    got = distillation_loss(student, teacher, y, temperature, 1.0)
    assert torch.allclose(got, temperature**2 * kl, rtol=1e-5, atol=1e-6)
    mixed = distillation_loss(student, teacher, y, temperature, 0.25)
    assert torch.allclose(mixed, 0.25 * got + 0.75 * F.cross_entropy(student, y), rtol=1e-5, atol=1e-6)
    assert distillation_loss(teacher, teacher, y, temperature, 1.0).abs() < 1e-5  # same logits: no soft loss


def _iris(**train):
    return {"name": "iris", "data": {"source": "builtin", "name": "iris"}, "model": tiny_mlp(),
            "train": quick_train(**train)}


def test_teacher_is_frozen_and_only_the_student_learns(tmp_path):
    # a teacher with batch norm and dropout: train mode would move its running statistics
    cfg = _iris(epochs=1)
    cfg["model"] = tiny_mlp(batch_norm=True, dropout=0.3)
    teacher_run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    teacher = teacher_run.load_model()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_cfg = _iris(epochs=2)
    student_cfg["task"] = "distillation"
    init = prepare(load_config(student_cfg)).model  # the student's initial weights (same seed)
    student = layerwise.train(student_cfg, runs_dir=tmp_path / "runs", quiet=True,
                              callbacks=[TeacherCallback(teacher, 4.0, 0.9)])
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and batch-norm statistics untouched
    # the student did learn: every one of its parameters moved from its initial value
    for (key, a), b in zip(student.model.state_dict().items(), init.state_dict().values()):
        assert not torch.equal(a, b), key


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    cfg = {"name": "teacher", "data": {"source": "builtin", "name": "digits"},
           "model": tiny_mlp(hidden=[64, 64]), "train": quick_train(epochs=2)}
    return folder, layerwise.train(cfg, runs_dir=folder / "runs", quiet=True)


def test_distill_end_to_end_compares_and_loads(digits_teacher):
    folder, teacher = digits_teacher
    student_yaml = write_yaml(folder / "student.yaml", {"name": "student", "model": tiny_mlp(hidden=[8]),
                                                        "train": quick_train(epochs=2)})
    run = layerwise.distill(teacher.path, student_yaml, temperature=3.0, alpha=0.7, runs_dir=folder / "runs",
                            quiet=True)
    assert run.config.task == "distillation"
    assert run.config.data == teacher.config.data  # the teacher's data, splits and preprocessing
    info = json.loads((run.path / "metrics.json").read_text())["distillation"]
    assert (info["temperature"], info["alpha"]) == (3.0, 0.7)
    roles = [row["role"] for row in info["rows"]]
    assert roles == ["teacher", "student alone", "distilled student"]
    teacher_row, alone_row, distilled_row = info["rows"]
    assert teacher_row["parameters"] > distilled_row["parameters"] == alone_row["parameters"]
    assert teacher_row["accuracy"] == pytest.approx(teacher.metrics["metrics"]["accuracy"])
    n = teacher_row["samples"]
    assert distilled_row["samples"] == n and 0 <= distilled_row["errors"] <= n
    assert distilled_row["errors"] == round((1 - distilled_row["accuracy"]) * n)
    assert layerwise.load_run(alone_row["run"]).config.task == "classification"
    report = (run.path / "report.html").read_text()
    assert "<h2>Distillation</h2>" in report and "student alone" in report and "distilled student" in report
    # a distilled run is a classifier like any other once trained
    loaded = layerwise.load_run(run.path)
    assert loaded.evaluate()["accuracy"] == pytest.approx(distilled_row["accuracy"])


def test_other_data_and_a_regression_teacher_are_refused(digits_teacher):
    folder, teacher = digits_teacher
    other = write_yaml(folder / "other.yaml", {"data": {"source": "builtin", "name": "digits", "split_seed": 7},
                                               "model": tiny_mlp(hidden=[8]), "train": quick_train(epochs=1)})
    code, _, err = cli("distill", teacher.path, other, "--runs-dir", folder / "bad", cwd=folder)
    assert_one_line_error(code, err, "data", "split_seed", "teacher")
    assert run_dirs(folder / "bad") == []

    regression = layerwise.train({"name": "reg", "data": {"source": "builtin", "name": "diabetes"},
                                  "model": tiny_mlp(), "train": quick_train(epochs=1)},
                                 runs_dir=folder / "reg", quiet=True)
    student = write_yaml(folder / "s.yaml", {"model": tiny_mlp(hidden=[8]), "train": quick_train(epochs=1)})
    with pytest.raises(ConfigError, match="'regression' run; distillation needs a classification teacher"):
        layerwise.distill(regression.path, student, runs_dir=folder / "bad", quiet=True)
    with pytest.raises(ConfigError, match="--alpha"):
        layerwise.distill(teacher.path, student, alpha=1.5, runs_dir=folder / "bad", quiet=True)
    assert run_dirs(folder / "bad") == []


def test_cli_distill_without_baseline(digits_teacher):
    folder, teacher = digits_teacher
    student = write_yaml(folder / "cli_student.yaml", {"name": "cli-student", "model": tiny_mlp(hidden=[8]),
                                                       "train": quick_train(epochs=1)})
    code, out, err = cli("distill", teacher.path, student, "--no-baseline", "--temperature", "2", "--alpha", "0.5",
                         "--set", "train.batch_size=64", "--runs-dir", folder / "cli", "--quiet", cwd=folder)
    assert code == 0, err
    assert "teacher" in out and "distilled student" in out and "student alone" not in out
    (path,) = run_dirs(folder / "cli")  # no baseline run
    run = layerwise.load_run(path)
    assert run.config.train.batch_size == 64
    info = run.metrics["distillation"]
    assert (info["temperature"], info["alpha"]) == (2.0, 0.5)
    assert [row["role"] for row in info["rows"]] == ["teacher", "distilled student"]
