"""Few-shot learning with prototypical networks: episodes draw disjoint support and query sets from
the right classes, the loss is the negative squared distance to class means, scores come with an
interval over episodes, and held-out classes never reach training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import layerwise
from layerwise import ConfigError
from layerwise.data.episodes import EpisodeLoader
from layerwise.data.spec import Split
from layerwise.tasks.few_shot import EpisodeEvaluator


def _split(per_class: int = 12, classes: int = 6) -> Split:
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)  # a sample's value is its index
    return Split(x, y)


def test_episodes_draw_disjoint_support_and_query_sets_from_the_chosen_classes():
    split = _split()
    loader = EpisodeLoader(split, classes=[0, 2, 4, 5], ways=3, shots=2, queries=4, episodes=20, seed=1)
    for index, shots in loader.indices():
        assert shots == 2 and len(index) == 3 * (2 + 4) and len(set(index.tolist())) == len(index)
        labels = split.y[torch.from_numpy(index)]
        support, query = labels[:6], labels[6:]
        assert set(labels.tolist()) <= {0, 2, 4, 5} and len(set(labels.tolist())) == 3
        # the episode's class order: support class by class, then queries in the same order
        order = support[::2].tolist()
        assert support.tolist() == [c for c in order for _ in range(2)]
        assert query.tolist() == [c for c in order for _ in range(4)]
    x, y = next(iter(loader))
    assert y.tolist() == [0, 0, 1, 1, 2, 2] + [0] * 4 + [1] * 4 + [2] * 4  # relabelled 0 .. ways - 1


def test_episodes_repeat_by_seed_and_epoch_and_a_resume_skips_the_trained_ones():
    loader = EpisodeLoader(_split(), classes=range(6), ways=2, shots=1, queries=2, episodes=5, seed=3)
    first = [x.flatten().tolist() for x, _ in loader]
    assert first == [x.flatten().tolist() for x, _ in loader]  # the same seed and epoch: the same episodes
    loader.set_epoch(1)
    assert [x.flatten().tolist() for x, _ in loader] != first
    loader.set_epoch(0, start_batch=3)
    assert [x.flatten().tolist() for x, _ in loader] == first[3:]


def test_too_few_samples_for_an_episode_is_one_line_naming_the_class():
    with pytest.raises(ConfigError, match=r"val episodes need 15 samples of each class .5 shots \+ 10 queries.; "
                                          r"class 'b' has 12"):
        EpisodeLoader(_split(), classes=[1, 2, 3], ways=3, shots=5, queries=10, episodes=2, what="val episodes",
                      names=["a", "b", "c", "d", "e", "f"])


def test_the_loss_is_cross_entropy_over_negative_squared_distances_to_class_means():
    from layerwise.tasks.few_shot import Prototypical, PrototypicalConfig

    class Identity(torch.nn.Module):
        def forward_features(self, x):
            return x

    spec = type("Spec", (), {"class_names": ["a", "b", "c", "d"]})()
    task = Prototypical(spec, None, None, config=PrototypicalConfig(ways=2, shots=2, queries=1))
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])  # class 0 around (1, 0), 1 at (0, 5)
    query = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    out = task.evaluation_step(Identity(), (torch.cat([support, query]), torch.tensor([0, 0, 1, 1, 0, 1])))
    # by hand: distances² from (1, 1) to (1, 0) and (0, 5): 1 and 17; from (0, 3): 10 and 4
    expected = torch.tensor([[-1.0, -17.0], [-10.0, -4.0]])
    torch.testing.assert_close(out.outputs, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, torch.tensor([0, 1])))
    assert out.count == 2 and int(out.sums["accuracy"]) == 2


def test_episode_scores_come_with_a_95_percent_interval_per_number_of_shots():
    evaluator = EpisodeEvaluator(ways=2, main_shots=5)
    labels = {1: torch.tensor([0, 1, 0, 1]), 5: torch.tensor([0] * 5 + [1] * 5 + [0, 1])}
    for shots, right in [(1, 2), (1, 1), (1, 2), (5, 2), (5, 2)]:
        logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) if right == 2 else torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        evaluator.update(logits, labels[shots])
    result = evaluator.compute()
    scores = np.array([1.0, 0.5, 1.0])
    assert result["accuracy_1shot"] == pytest.approx(scores.mean())
    assert result["ci95_1shot"] == pytest.approx(1.96 * scores.std(ddof=1) / math.sqrt(3))
    assert result["accuracy"] == result["accuracy_5shot"] == 1.0 and result.details["episodes"] == {1: 3, 5: 2}


@pytest.fixture(scope="module")
def few_shot_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("few_shot")
    return layerwise.train({"name": "proto", "data": {"source": "builtin", "name": "digits", "val_fraction": 0.2},
                            "model": {"family": "cnn", "channels": [8], "convs_per_block": 1, "dropout": 0.0},
                            "task": {"name": "prototypical", "queries": 8, "episodes": 15, "eval_episodes": 30,
                                     "val_episodes": 5},
                            "train": {"epochs": 2, "lr": 0.003, "progress": False}}, runs_dir=folder / "runs",
                           quiet=True)


def test_a_prototypical_run_scores_held_out_classes_by_shots(few_shot_run):
    run = few_shot_run
    metrics = json.loads((run.path / "metrics.json").read_text())["metrics"]
    for shots in (1, 5):
        assert 0.2 < metrics[f"accuracy_{shots}shot"] <= 1 and metrics[f"ci95_{shots}shot"] > 0
    assert metrics["accuracy_5shot"] > metrics["accuracy_1shot"]  # more examples, better prototypes
    assert run.task.held_out == [5, 6, 7, 8, 9] and run.task.training_classes == [0, 1, 2, 3, 4]
    loader = run.task.loader(run.data.train, "train", run.config, None, "cpu")
    assert set(loader.by_class) == {0, 1, 2, 3, 4}  # held-out digits never reach training
    assert 0 <= float(run.history[-1]["train_accuracy"]) <= 1
    assert "Few-shot" in (run.path / "report.html").read_text()


def test_a_few_shot_run_refuses_to_predict_and_unknown_classes_on_one_line(few_shot_run, tmp_path):
    with pytest.raises(ConfigError, match="classifies against a support set"):
        few_shot_run.predict(few_shot_run.data.test.x[:2].numpy())
    codes = few_shot_run.embed(few_shot_run.data.test.x[:3].numpy()).codes  # what to compare examples with instead
    assert codes.shape == (3, 8) and np.isfinite(codes).all()
    with pytest.raises(ConfigError, match="task.held_out: '11' is not a class of the data; its classes are 0, 1") as info:
        layerwise.train({"data": {"source": "builtin", "name": "digits"},
                         "task": {"name": "prototypical", "held_out": ["11"]}}, runs_dir=tmp_path, quiet=True)
    assert "\n" not in str(info.value)
