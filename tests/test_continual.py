"""Continual learning: experiences show one group of classes at a time (with replayed past samples
for replay), EWC's penalty and Fisher match hand computations, the accuracy matrix gives average
accuracy and forgetting by their formulas, a real run scores naive fine-tuning far below replay,
and a killed run resumes to the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import (Killed, KillAt, assert_one_line_error, assert_same_weights, cli_in_process, run_dirs, weights,
                     write_yaml)

import layerwise
from layerwise import ConfigError
from layerwise.data.experiences import ExperienceLoader
from layerwise.data.spec import Split
from layerwise.tasks.continual import (
    ContinualConfig,
    _looped_fisher,
    average_accuracy,
    class_groups,
    diagonal_fisher,
    ewc_penalty,
    forgetting,
)

NAMES = [str(c) for c in range(10)]


def _split(classes: int = 6, per_class: int = 10) -> Split:
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)  # a sample's value is its index
    return Split(x, y)


def _config(method: str = "naive", name: str = "continual", **train) -> dict:
    return {"name": name, "data": {"source": "builtin", "name": "digits"},
            "model": {"family": "mlp", "hidden": [64], "dropout": 0.0},
            "task": {"name": "continual", "method": method, "replay_size": 100, "ewc_samples": 50},
            "train": {"epochs": 15, "batch_size": 16, "lr": 0.003, "progress": False, "device": "cpu", **train}}


# -- experiences and replay ------------------------------------------------------------------------------


def test_the_experience_loader_yields_only_the_current_experiences_classes():
    loader = ExperienceLoader(_split(), [[0, 1], [2, 3], [4, 5]], epochs_per_experience=2, batch_size=6)
    assert len(loader) == 4  # 20 samples an experience: 4 batches of 6, the last one from a fresh shuffle
    for epoch in range(6):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(y) == 6 for _, y in batches)
        current = {0: {0, 1}, 1: {2, 3}, 2: {4, 5}}[epoch // 2]
        labels = torch.cat([y for _, y in batches])
        assert set(labels.tolist()) == current
        seen = torch.cat([x for x, _ in batches]).flatten().long()
        assert set(seen.tolist()) == set(torch.nonzero(torch.isin(_split().y, torch.tensor(sorted(current)))).flatten().tolist())
    loader.set_epoch(3)
    whole = [x.flatten().tolist() for x, _ in loader]
    assert whole == [x.flatten().tolist() for x, _ in loader]  # the same seed and epoch: the same batches
    loader.set_epoch(3, start_batch=2)
    assert [x.flatten().tolist() for x, _ in loader] == whole[2:]  # a resume skips what was trained


def test_replay_batches_join_past_classes_after_the_first_experience():
    loader = ExperienceLoader(_split(), [[0, 1], [2, 3], [4, 5]], 1, batch_size=4, replay_size=6)
    assert len(loader.memory(0)) == 0 and all(len(y) == 4 for _, y in loader)  # nothing to replay yet
    for epoch, past in ((1, {0, 1}), (2, {0, 1, 2, 3})):
        loader.set_epoch(epoch)
        for _, y in loader:
            assert len(y) == 8  # as many replayed samples as current ones
            assert set(y[:4].tolist()) <= {2 * epoch, 2 * epoch + 1} and set(y[4:].tolist()) <= past
        memory = _split().y[torch.from_numpy(loader.memory(epoch))]
        assert torch.bincount(memory).tolist() == [6 // len(past)] * len(past)  # class-balanced
    whole = [(x.flatten().tolist(), y.tolist()) for x, y in loader]
    assert whole == [(x.flatten().tolist(), y.tolist()) for x, y in loader]  # replayed draws repeat too: an exact resume
    loader.set_epoch(2, start_batch=1)
    assert [(x.flatten().tolist(), y.tolist()) for x, y in loader] == whole[1:]
    # a class's share shrinks to a prefix of what it held: a memory a streaming learner could have kept
    earlier = [i for i in loader.memory(2).tolist() if i < 20]  # the samples of classes 0 and 1
    assert len(earlier) == 2 and set(earlier) <= set(loader.memory(1).tolist())


# -- EWC -------------------------------------------------------------------------------------------------


def test_ewc_penalty_is_zero_at_the_anchor_and_the_hand_computed_value_away_from_it():
    model = torch.nn.Linear(2, 1)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {"weight": torch.tensor([[1.0, 4.0]]), "bias": torch.tensor([2.0])}
    assert ewc_penalty(model, fisher, anchor, 2.0).item() == 0.0
    with torch.no_grad():
        model.weight += torch.tensor([[0.5, -1.0]])
        model.bias += 3.0
    # by hand: 2 / 2 * (1 * 0.5² + 4 * 1² + 2 * 3²) = 22.25
    assert ewc_penalty(model, fisher, anchor, 2.0).item() == pytest.approx(22.25)


def test_the_fisher_is_the_mean_squared_gradient_of_the_models_own_prediction():
    model = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    fisher = diagonal_fisher(model, torch.tensor([[1.0, 2.0], [2.0, 0.0]]))
    # zero weights: p = (1/2, 1/2) and the prediction is class 0, so the gradient of log p_0 is
    # (1 - 1/2) x for row 0 and -1/2 x for row 1: squared, x² / 4, averaged over the two samples
    expected = torch.tensor([[1.0 + 4.0, 4.0 + 0.0], [1.0 + 4.0, 4.0 + 0.0]]) / 4 / 2
    torch.testing.assert_close(fisher["weight"], expected)
    torch.testing.assert_close(fisher["bias"], torch.tensor([0.25, 0.25]))
    assert model.weight.grad is None  # gradients stay out of the optimizer's way
    # the vectorized estimate is the per-sample loop's, on a model with a hidden layer too
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    looped = _looped_fisher(mlp, dict(mlp.named_parameters()), x)
    for name, value in diagonal_fisher(mlp, x).items():
        torch.testing.assert_close(value, looped[name])


# -- the scores ------------------------------------------------------------------------------------------


def test_forgetting_and_average_accuracy_follow_their_formulas_on_a_hand_made_matrix():
    matrix = [[0.9, 0.0, 0.0],
              [0.6, 0.8, 0.0],
              [0.3, 0.7, 0.95]]
    assert average_accuracy(matrix) == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    # experience 1: best 0.9, last 0.3; experience 2: best 0.8, last 0.7
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.7)) / 2)


# -- bad splits, one line each ---------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"splits": [["0", "1"], ["2", "11"]]}, "task.splits: '11' is not a class of the data; its classes are 0, 1"),
    ({"splits": [[0, 1, 2], [2, 3]] + [[c] for c in range(4, 10)]}, "task.splits: class '2' is in experiences 1 and 2"),
    ({"splits": [[0, 1], [2, 3]]}, "task.splits: classes 4, 5, 6, 7, 8, 9 in no experience"),
    ({"splits": [list(range(10))]}, "task.splits: 1 group; continual learning needs at least 2 experiences"),
    ({"experiences": 3}, "task.experiences: 10 classes do not split into 3 equal experiences; choose one of 2, 5, 10"),
    ({"experiences": 3, "splits": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]}, "task.experiences: 3, but task.splits has 2"),
])
def test_a_bad_split_is_one_line_naming_the_key(options, message):
    with pytest.raises(ConfigError) as info:
        class_groups(NAMES, ContinualConfig(**options))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_explicit_splits_give_class_indices_in_training_order():
    assert class_groups(NAMES, ContinualConfig(splits=[[9, 8], ["0", 1, 2, 3, 4, 5, 6, 7]])) == [[9, 8], list(range(8))]
    assert class_groups(NAMES, ContinualConfig()) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.mark.parametrize("train, message", [
    ({"epochs": 12}, "train.epochs: 12 epochs do not split into 5 experiences"),
    ({"early_stopping": {"patience": 2}}, "train.early_stopping: a continual run trains every experience"),
    ({"max_steps": 50}, "train.max_steps: a continual run"),
])
def test_training_settings_that_cut_the_sequence_are_refused_before_any_file(train, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as info:
        layerwise.train(_config(**train), runs_dir=tmp_path, quiet=True)
    assert "\n" not in str(info.value) and not run_dirs(tmp_path)


def test_epochs_per_experience_must_agree_with_train_epochs(tmp_path):
    config = _config()
    config["task"]["epochs_per_experience"] = 2
    with pytest.raises(ConfigError, match=r"2 epochs x 5 experiences = 10, but train.epochs is 15; set train.epochs: 10"):
        layerwise.train(config, runs_dir=tmp_path, quiet=True)


def test_the_cli_refuses_a_bad_split_in_one_line(tmp_path):
    config = _config()
    config["task"]["splits"] = [[0, 1, 2, 3, 4], [5, 6, 7, 8, "ten"]]
    code, _, err = cli_in_process("train", write_yaml(tmp_path / "bad.yaml", config), "--runs-dir", tmp_path / "runs",
                                  cwd=tmp_path)
    assert_one_line_error(code, err, "task.splits: 'ten' is not a class of the data")


# -- real runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("continual")
    return {method: layerwise.train(_config(method, name=method), runs_dir=folder, quiet=True)
            for method in ("naive", "replay")}


def test_a_run_scores_the_accuracy_matrix_after_every_experience(runs):
    run = runs["replay"]
    saved = json.loads((run.path / "metrics.json").read_text())
    metrics, details = saved["metrics"], saved["details"]
    matrix = details["accuracy_matrix"]
    assert np.shape(matrix) == (5, 5) and details["experiences"] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"],
                                                                      ["8", "9"]]
    assert metrics["average_accuracy"] == pytest.approx(np.mean(matrix[-1]))
    assert metrics["forgetting"] == pytest.approx(forgetting(matrix))
    assert all(matrix[i][i] > 0.8 for i in range(5))  # each experience is learnt when it is trained
    assert sorted(p.name for p in (run.path / "continual").iterdir()) == [
        f"after-experience-{k}.safetensors" for k in range(1, 5)]
    assert [row["epoch"] for row in run.history] == list(range(1, 16))
    assert "Continual learning" in (run.path / "report.html").read_text()
    # a loaded run scores the same matrix from the weights it kept
    again = layerwise.load_run(run.path).evaluate()
    np.testing.assert_allclose(again.details["accuracy_matrix"], matrix)


def test_naive_fine_tuning_forgets_and_replay_keeps_the_past(runs):
    naive, replay = (runs[m].metrics["metrics"] for m in ("naive", "replay"))
    matrix = runs["naive"].metrics["details"]["accuracy_matrix"]
    assert max(matrix[-1][:-1]) < 0.2  # class-incremental: the last experience's classes take over the head
    assert naive["forgetting"] > 0.7 and naive["average_accuracy"] < 0.35
    assert replay["average_accuracy"] > naive["average_accuracy"] + 0.3
    assert replay["forgetting"] < naive["forgetting"] - 0.3


def test_a_killed_ewc_run_resumes_to_the_same_weights(tmp_path):
    """EWC carries state between experiences (the Fisher and the anchor weights), in the checkpoint; the
    replay memory is a function of the seed (the loader tests check its batches repeat)."""
    # digits: 1294 training samples, at most 262 an experience: 17 steps an epoch, 3 epochs an experience;
    # step 107 is in experience 3 (from step 102), after experience 2's Fisher and a step checkpoint at 104
    config = _config("ewc", checkpoint_every=4)
    straight = layerwise.train(config, runs_dir=tmp_path / "straight", quiet=True)
    with pytest.raises(Killed):
        layerwise.train(config, runs_dir=tmp_path / "killed", quiet=True, callbacks=[KillAt(107)])
    (run_dir,) = run_dirs(tmp_path / "killed")
    with pytest.raises(ConfigError, match="a continual run's length cannot change when it resumes"):
        layerwise.train(resume=run_dir, quiet=True, train__epochs=20)
    resumed = layerwise.train(resume=run_dir, quiet=True)
    assert_same_weights(weights(resumed.model), weights(straight.model))
    assert resumed.metrics["details"]["accuracy_matrix"] == straight.metrics["details"]["accuracy_matrix"]
    assert all(row["train_ewc_penalty"] > 0 for row in resumed.history[3:])  # from the second experience on
