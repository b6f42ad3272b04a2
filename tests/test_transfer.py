"""Transfer learning: model.init_from loads another run's weights where they fit (a new head for
another label set), refuses what does not fit in one line naming the layers, and train.freeze keeps
the matched parameters exactly as loaded."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train, write_csv, write_yaml

import layerwise
from layerwise import ConfigError, ModelError
from layerwise.runs.config import load_config
from layerwise.runs.training import prepare
from layerwise.train import Callback

CNN = {"family": "cnn", "channels": [8], "convs_per_block": 1, "dropout": 0.0}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A CNN trained on the ten bundled digit classes: the source of every transfer below."""
    folder = tmp_path_factory.mktemp("transfer")
    return layerwise.train({"name": "source", "data": {"source": "builtin", "name": "digits"}, "model": CNN,
                            "train": quick_train(epochs=1)}, runs_dir=folder / "runs", quiet=True)


def _three_digits(tmp_path, make_image_folder, **sections):
    folder = make_image_folder(classes=(0, 1, 2), per_class=12, mode="L", size=8)
    return {"name": "target", "data": {"source": "image_folder", "path": str(folder)}, "train": quick_train(),
            **sections}


def test_the_features_are_loaded_and_the_new_heads_start_fresh(digits_run, tmp_path, make_image_folder):
    source = digits_run.model.state_dict()
    prepared = prepare(load_config(_three_digits(tmp_path, make_image_folder,
                                                 model={**CNN, "init_from": str(digits_run.path)})))
    state = prepared.model.state_dict()
    features = [name for name in state if not name.startswith("head.")]
    assert features and all(torch.equal(state[name], source[name]) for name in features)
    assert state["head.weight"].shape[0] == 3 and source["head.weight"].shape[0] == 10  # another label set
    assert prepared.notes and prepared.notes[0].startswith("head re-initialised (head.weight, head.bias)")
    # the file itself works as well as the run directory
    again = prepare(load_config(_three_digits(tmp_path, make_image_folder,
                                              model={**CNN, "init_from": str(digits_run.path / "model.safetensors")})))
    assert all(torch.equal(again.model.state_dict()[name], source[name]) for name in features)


def test_frozen_features_stay_as_loaded_while_the_head_learns(digits_run, tmp_path, make_image_folder):
    config = _three_digits(tmp_path, make_image_folder, model={**CNN, "init_from": str(digits_run.path)},
                           train=quick_train(epochs=3, freeze=["body.*"]))
    run = layerwise.train(config, runs_dir=tmp_path / "runs", quiet=True)
    source, tuned = digits_run.model.state_dict(), layerwise.load_run(run.path).model.state_dict()
    frozen = [name for name in tuned if name.startswith("body.")]
    # weights and batch-norm statistics alike: a frozen batch norm normalises with what it loaded
    assert any("running_mean" in name for name in frozen)
    assert frozen and all(torch.equal(tuned[name], source[name]) for name in frozen)
    assert run.config.model.init_from == str(digits_run.path)  # the run says where it started
    # a resume takes its checkpoint, not the source again: it works with the source gone
    moved = digits_run.path.with_name("moved")
    digits_run.path.rename(moved)
    try:
        resumed = layerwise.train(resume=run.path, quiet=True, train__epochs=4)
        assert resumed.metrics["training"]["epochs_run"] == 4
    finally:
        moved.rename(digits_run.path)


def test_another_family_or_architecture_is_one_line_naming_it(digits_run, tmp_path, make_image_folder):
    with pytest.raises(ModelError, match=r"holds a 'cnn' model and this config builds 'mlp'; set model.family: cnn"):
        prepare(load_config(_three_digits(tmp_path, make_image_folder,
                                          model={"family": "mlp", "init_from": str(digits_run.path)})))
    with pytest.raises(ModelError) as info:
        prepare(load_config(_three_digits(tmp_path, make_image_folder,
                                          model={**CNN, "channels": [16], "init_from": str(digits_run.path)})))
    message = str(info.value)
    assert "\n" not in message and "body.0.weight (8×1×3×3 there, 16×1×3×3 here)" in message
    assert message.endswith("build the same architecture as that run (only the head may differ)")


def test_a_pattern_matching_nothing_and_freezing_everything_are_refused(tmp_path):
    path = write_csv(tmp_path, n=60)
    base = {"data": {"source": "csv", "path": str(path), "target": "target"},
            "model": {"family": "mlp", "hidden": [8]}}
    with pytest.raises(ConfigError, match=r"^train.freeze: 'encoder.\*' matches no parameter of this model; "
                                          r"its modules are body, head, inputs"):
        prepare(load_config({**base, "train": {"freeze": ["encoder.*"]}}))
    with pytest.raises(ConfigError, match="freezes every parameter"):
        prepare(load_config({**base, "train": {"freeze": ["*"]}}))


def test_the_cli_names_a_missing_source_in_one_line(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"data": {"source": "builtin", "name": "digits"}, "model": CNN,
                                               "train": quick_train(epochs=1)})
    code, _, err = cli("train", config, "--set", "model.init_from=nowhere", cwd=tmp_path)
    assert_one_line_error(code, err, "model.init_from: nowhere", "give the path of a trained run")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_layer_learning_rates_keep_their_ratio_through_the_schedule(tmp_path):
    from layerwise.train import Trainer

    path = write_csv(tmp_path, n=60)
    config = {"data": {"source": "csv", "path": str(path), "target": "target"},
              "model": {"family": "mlp", "hidden": [8]},
              "train": {"lr": 0.01, "layer_lr_scale": {"body.*": 0.1, "inputs.*": 0.5},
                        "scheduler": {"name": "onecycle"}, "epochs": 1, "batch_size": 16, "progress": False}}
    prepared = prepare(load_config(config))
    trainer = Trainer(prepared.model, prepared.task, prepared.config.train, eval_cfg=prepared.config.evaluate)
    optimizer = trainer.optimizers["main"]
    names = {id(p): n for n, p in prepared.model.named_parameters()}
    rate = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rate["body.0.weight"] == pytest.approx(0.001) and rate["head.weight"] == pytest.approx(0.01)
    from layerwise.runs.training import loaders

    train_loader, val_loader = loaders(prepared.bundle, prepared.config, torch.device("cpu"))
    trainer.fit(train_loader, val_loader)  # OneCycle moved every rate: the ratios stay
    rate = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rate["body.0.weight"] / rate["head.weight"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"^train.layer_lr_scale: 'encoder.\*' matches no parameter"):
        bad = prepare(load_config({**config, "train": {"layer_lr_scale": {"encoder.*": 0.1}}}))
        Trainer(bad.model, bad.task, bad.config.train)


@pytest.mark.parametrize("head_epochs, every, released", [
    (2, 0, [1, 1, 4, 4, 4]),   # LP-FT: the head alone, then everything
    (0, 1, [1, 2, 3, 4, 4]),   # ULMFiT: one more group from the top each epoch
    (1, 2, [1, 2, 2, 3, 3]),   # the head for one epoch, then a group every two
])
def test_the_unfreezing_schedule_releases_groups_from_the_top(head_epochs, every, released):
    from layerwise.train.unfreeze import UnfreezeSchedule

    model = torch.nn.Sequential()
    model.add_module("inputs", torch.nn.Linear(2, 3))
    model.add_module("body", torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3)))
    model.add_module("head", torch.nn.Linear(3, 1))
    schedule = UnfreezeSchedule(model, head_epochs, every)
    assert [len(g) for g in schedule.groups] == [2, 2, 2, 2]  # inputs, body.0, body.2, head
    assert [schedule.released(epoch) for epoch in range(5)] == released
    schedule.apply(0)
    assert [p.requires_grad for p in model.parameters()] == [False] * 6 + [True] * 2  # the head alone


class _Weights(Callback):
    """The model's weights at the end of every epoch."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, trainer, logs):
        self.seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_a_warming_head_trains_alone_then_the_layers_below_follow_and_freeze_holds(tmp_path):
    path = write_csv(tmp_path, n=80)
    weights = _Weights()
    config = {"data": {"source": "csv", "path": str(path), "target": "target"},
              "model": {"family": "mlp", "hidden": [8, 8]}, "evaluate": {"baselines": False},
              "train": quick_train(epochs=4, lr=0.05, unfreeze={"head_epochs": 2, "every": 1},
                                   freeze=["inputs.*"])}
    run = layerwise.train(config, runs_dir=tmp_path / "runs", quiet=True, callbacks=[weights])
    head, first, second = "head.weight", "body.0.weight", "body.3.weight"
    assert set(weights.seen[0]) >= {head, first, second}
    # epochs 1 and 2: only the head moves; 3: the top body layer too; 4: both body layers; inputs never
    assert not torch.equal(weights.seen[0][head], weights.seen[1][head])
    assert torch.equal(weights.seen[0][second], weights.seen[1][second])
    assert not torch.equal(weights.seen[1][second], weights.seen[2][second])
    assert torch.equal(weights.seen[1][first], weights.seen[2][first])
    assert not torch.equal(weights.seen[2][first], weights.seen[3][first])
    inputs = [k for k in weights.seen[0] if k.startswith("inputs.")]
    assert all(torch.equal(weights.seen[0][k], weights.seen[3][k]) for k in inputs)
    assert [int(row["unfrozen_groups"]) for row in run.history] == [1, 1, 2, 3]
    assert all(p.requires_grad for n, p in run.model.named_parameters() if not n.startswith("inputs."))
