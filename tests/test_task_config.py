"""A config section per task (`task: {name: ..., ...}`), the old spellings it replaces, and the
`train.strategy` seam."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from helpers import config_error as _error
from helpers import assert_one_line_error, cli, quick_train, run_dirs, tiny_mlp, write_yaml

import layerwise
from layerwise import ConfigError, load_config
from layerwise.core.config import ConfigDeprecationWarning
from layerwise.runs.training import prepare
from layerwise.train.strategies import STRATEGIES, Strategy, register_strategy

DIGITS = {"source": "builtin", "name": "digits", "limit": 200}
IRIS = {"source": "builtin", "name": "iris"}


# -- the long form ---------------------------------------------------------------------------


def test_long_form_validates_trains_and_loads_back(tmp_path):
    raw = {"name": "digits", "data": dict(DIGITS), "model": {"family": "mlp", "hidden": [16]},
           "task": {"name": "classification", "label_smoothing": 0.1, "class_weight": "balanced"},
           "train": quick_train(epochs=1)}
    cfg = load_config(raw)
    assert cfg.task == "classification"  # the name stays a string for every caller
    assert cfg.task_options.label_smoothing == 0.1 and cfg.task_options.class_weight == "balanced"
    run = layerwise.train(raw, runs_dir=tmp_path, quiet=True)
    assert run.task.label_smoothing == 0.1 and run.task.weight is not None
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["task"]["name"] == "classification" and saved["task"]["label_smoothing"] == 0.1
    assert "label_smoothing" not in saved["train"]
    loaded = layerwise.load_run(run.path)
    assert loaded.config == run.config
    assert torch.equal(loaded.task.weight, run.task.weight)  # 'balanced' as resolved on the training split


def test_short_and_absent_forms_still_work():
    short = load_config({"data": IRIS, "model": tiny_mlp(), "task": "classification"})
    assert short.task == "classification" and short.task_options.label_smoothing == 0.0
    assert load_config(short.to_dict()) == short
    absent = load_config({"data": IRIS, "model": tiny_mlp()})
    assert absent.task is None and absent.task_options is None
    prepared = prepare(absent)
    assert prepared.config.task == "classification"  # inferred from the data
    assert prepared.config.task_options == short.task_options
    options = load_config({"task": "regression"}).task_options
    assert not type(options).model_fields and load_config({"task": "regression"}).to_dict()["task"] == "regression"


def test_overrides_reach_into_the_task_section():
    cfg = load_config({"data": IRIS, "model": tiny_mlp(), "task": "classification"},
                      ["task.label_smoothing=0.2", "task.adversarial_training.eps=0.1"])
    assert cfg.task == "classification" and cfg.task_options.label_smoothing == 0.2
    assert cfg.task_options.adversarial_training.eps == 0.1
    assert load_config(cfg.to_dict()) == cfg


def test_options_without_a_name_go_to_the_inferred_task():
    cfg = load_config({"data": IRIS, "model": tiny_mlp(), "task": {"label_smoothing": 0.1}})
    assert cfg.task is None and load_config(cfg.to_dict()) == cfg
    prepared = prepare(cfg)
    assert prepared.config.task == "classification" and prepared.task.label_smoothing == 0.1
    # options the inferred task does not take are refused before any file is written
    with pytest.raises(ConfigError, match=r"^task\.label_smoothing: the 'regression' task"):
        prepare(load_config({"data": {"name": "diabetes"}, "model": tiny_mlp(), "task": {"label_smoothing": 0.1}}))


@pytest.mark.parametrize("raw, start, suggestion", [
    ({"task": {"name": "classification", "label_smothing": 0.1}}, "task.label_smothing: unknown key", "label_smoothing"),
    ({"task": {"name": "classification", "adversarial_training": {"eps": 0.1, "stpes": 2}}},
     "task.adversarial_training.stpes: unknown key", "steps"),
    ({"task": {"name": "vae", "importance_sample": 5}}, "task.importance_sample: unknown key", "importance_samples"),
    ({"task": {"name": "adversarial", "lr_dd": 1e-3}}, "task.lr_dd: unknown key", "lr_d"),
    ({"task": {"name": "clasification"}}, "task.name: unknown task 'clasification'", "classification"),
])
def test_unknown_keys_are_one_line_errors_with_a_suggestion(raw, start, suggestion):
    message = _error(raw)
    assert message.startswith(start)
    assert f"did you mean '{suggestion}'" in message


def test_bad_values_and_shapes_name_the_key():
    assert _error({"task": {"name": "classification", "label_smoothing": 1.5}}).startswith("task.label_smoothing:")
    assert _error({"task": {"name": "regression", "label_smoothing": 0.1}}).startswith("task.label_smoothing: unknown key")
    assert _error({"task": 5}).startswith("task: expected a task name")
    assert _error({"task": {"name": 5}}).startswith("task.name: expected a task name")


def test_unknown_key_on_the_command_line(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"data": IRIS, "model": tiny_mlp(), "train": quick_train(epochs=1),
                                              "task": {"name": "classification", "label_smothing": 0.1}})
    code, _out, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_one_line_error(code, err, "task.label_smothing", "did you mean 'label_smoothing'")
    assert run_dirs(tmp_path / "runs") == []


# -- the old spellings -----------------------------------------------------------------------

GAN = {"family": "gan", "channels": [16, 8]}
VAE = {"family": "vae", "hidden": [16], "latent": 2}
ADV = {"eps": 0.1, "steps": 2, "eval_samples": 0}

OLD_SPELLINGS = [  # (id, old config, new config, the new key the warning names)
    ("label_smoothing", {"data": IRIS, "model": tiny_mlp(), "train": {"label_smoothing": 0.1}},
     {"data": IRIS, "model": tiny_mlp(), "task": {"name": "classification", "label_smoothing": 0.1}},
     "label_smoothing: 0.1"),
    ("class_weight", {"data": IRIS, "model": tiny_mlp(), "train": {"class_weight": [1, 2, 3]}},
     {"data": IRIS, "model": tiny_mlp(), "task": {"name": "classification", "class_weight": [1, 2, 3]}},
     "class_weight: [1, 2, 3]"),
    ("adversarial", {"data": IRIS, "model": tiny_mlp(), "train": {"adversarial": ADV}},
     {"data": IRIS, "model": tiny_mlp(), "task": {"name": "classification", "adversarial_training": ADV}},
     "adversarial_training: {eps: 0.1"),
    ("importance_samples", {"data": DIGITS, "model": VAE, "evaluate": {"importance_samples": 5}},
     {"data": DIGITS, "model": VAE, "task": {"name": "vae", "importance_samples": 5}},
     "importance_samples: 5"),
    ("lr_d", {"data": DIGITS, "model": {**GAN, "lr_d": 1e-3}},
     {"data": DIGITS, "model": GAN, "task": {"name": "adversarial", "lr_d": 1e-3}}, "lr_d: 0.001"),
    ("betas", {"data": DIGITS, "model": {**GAN, "betas": [0.0, 0.9]}},
     {"data": DIGITS, "model": GAN, "task": {"name": "adversarial", "betas": [0.0, 0.9]}}, "betas: [0.0, 0.9]"),
]


@pytest.mark.parametrize("old, new, shown", [case[1:] for case in OLD_SPELLINGS], ids=[c[0] for c in OLD_SPELLINGS])
def test_old_spelling_warns_with_the_new_key_and_has_the_same_effect(old, new, shown):
    with pytest.warns(DeprecationWarning, match=r"is deprecated; write it as task: \{name: \w+, " + shown.replace("[", r"\[").replace("{", r"\{")):
        old_cfg = load_config(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)  # the new spelling is silent
        new_cfg = load_config(new)
    assert old_cfg.task_options == new_cfg.task_options
    old_run, new_run = prepare(old_cfg), prepare(new_cfg)
    assert old_run.config == new_run.config  # once the task is resolved, the two configs are one
    assert old_run.task.config == new_run.task.config
    # the effect: the same loss, or the same optimizers
    if new_run.task.manual_optimization:
        groups = [{k: v for k, v in group.items() if k != "params"}
                  for group in new_run.task.configure_optimizers(new_run.model).values()]
        assert groups == [{k: v for k, v in group.items() if k != "params"}
                          for group in old_run.task.configure_optimizers(old_run.model).values()]
        assert any(g["lr"] == 1e-3 or g["betas"] == (0.0, 0.9) for g in groups)
    elif new_run.config.task == "classification":
        outputs, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
        assert torch.equal(old_run.task.loss(outputs, y)[0], new_run.task.loss(outputs, y)[0])
        assert getattr(old_run.task, "adversarial", None) == getattr(new_run.task, "adversarial", None)


def test_old_adversarial_spelling_errors_name_the_path_written():
    message = _error({"data": IRIS, "model": tiny_mlp(), "train": {"adversarial": {"eps": 0}}})
    assert message.startswith("train.adversarial.eps:")


def test_old_and_new_spelling_together_is_an_error():
    message = _error({"task": {"name": "classification", "label_smoothing": 0.1}, "train": {"label_smoothing": 0.2}})
    assert message.startswith("train.label_smoothing: given twice")


def test_old_spelling_for_a_task_without_the_option_is_ignored_with_a_warning():
    with pytest.warns(DeprecationWarning, match="the 'regression' task takes no label_smoothing: it is ignored"):
        cfg = load_config({"data": {"name": "diabetes"}, "model": tiny_mlp(), "task": "regression",
                           "train": {"label_smoothing": 0.1}})
    assert not cfg.task_options.model_dump()


def test_old_spelling_on_the_command_line_warns_after_the_run(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"data": IRIS, "model": tiny_mlp(),
                                              "train": quick_train(epochs=1, label_smoothing=0.1)})
    code, _out, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert code == 0, err
    assert ("warning: train.label_smoothing is deprecated; write it as task: {name: classification, "
            "label_smoothing: 0.1}") in err.splitlines()
    (run,) = run_dirs(tmp_path / "runs")
    assert yaml.safe_load((run / "config.yaml").read_text())["task"]["label_smoothing"] == 0.1


def test_a_run_directory_written_before_the_move_still_loads(tmp_path):
    run = layerwise.train({"name": "iris", "data": IRIS, "model": tiny_mlp(), "task": {"name": "classification",
                           "class_weight": "balanced"}, "train": quick_train(epochs=1)}, runs_dir=tmp_path, quiet=True)
    # its config.yaml as layerwise wrote it before: the name only, the options (and every default) in train/evaluate
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    old = dict(saved, task="classification")
    old["train"] = {k: v for k, v in saved["train"].items() if k != "strategy"}
    old["train"].update(label_smoothing=0.0, class_weight="balanced", adversarial=None)
    old["evaluate"] = dict(saved["evaluate"], importance_samples=100)
    (run.path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.warns(DeprecationWarning) as caught:
        loaded = layerwise.load_run(run.path)
    # only the value that differs from its default warns; the defaults every old run lists are dropped quietly
    assert [str(w.message).split(" is ")[0] for w in caught if w.category is ConfigDeprecationWarning] == \
        ["train.class_weight"]
    assert loaded.config == run.config
    assert torch.equal(loaded.task.weight, run.task.weight)
    assert loaded.evaluate()["accuracy"] == pytest.approx(run.evaluate()["accuracy"])


def test_old_gan_run_directory_loads(tmp_path):
    run = layerwise.train({"data": DIGITS, "model": GAN, "train": {"max_steps": 1, "progress": False}},
                          runs_dir=tmp_path, quiet=True)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    old = dict(saved, task="adversarial", model=dict(saved["model"], lr_g=0.0002, lr_d=0.0002, betas=[0.5, 0.999]))
    (run.path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)  # defaults only: nothing to say
        loaded = layerwise.load_run(run.path)
    assert loaded.config == run.config and loaded.config.task_options.lr_d == 2e-4


# -- the training strategy seam --------------------------------------------------------------


def test_unknown_strategy_lists_the_registered_ones():
    message = _error({"train": {"strategy": "nope"}})
    assert message.startswith("train.strategy: unknown training strategy 'nope'")
    assert "choose one of: local" in message
    assert load_config({}).train.strategy == "local"


def test_the_strategy_runs_the_fit(tmp_path):
    calls = []

    @register_strategy("recording")
    class Recording(Strategy):
        def fit(self, trainer, train_loader, val_loader=None):
            calls.append(self.cfg.epochs)
            return STRATEGIES.get("local")(self.cfg).fit(trainer, train_loader, val_loader)

    try:
        run = layerwise.train({"data": IRIS, "model": tiny_mlp(), "train": quick_train(epochs=2, strategy="recording")},
                              runs_dir=tmp_path, quiet=True)
    finally:
        STRATEGIES._entries.pop("recording")
    assert calls == [2] and len(run.history) == 2
