"""Bagging (``model.bags``): members fitted on their own folds, averaged, resumed member by member.

The folds hold every training row out exactly once; the bag's prediction is the mean of its members'
(checked against the members run one by one); a bag interrupted in its second member resumes there and
ends with the very weights an uninterrupted bag has; the recipe bags small tables only; and what a bag
cannot be is refused on one line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import quick_train

import layerwise
from layerwise import ConfigError, ModelError, TrainingInterrupted
from layerwise.core.callback import Callback
from layerwise.runs.bagging import folds, read_bag_checkpoint


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small regression table: a price from a size and a district, with noise."""
    folder = tmp_path_factory.mktemp("bagging")
    rng = np.random.default_rng(0)
    n = 240
    size = rng.uniform(40, 200, n)
    district = rng.choice(["north", "south", "east"], n)
    price = 2.0 * size + 60 * (district == "north") + rng.normal(0, 15, n)
    pd.DataFrame({"size": size, "district": district, "price": price}).to_csv(folder / "homes.csv", index=False)
    return folder


def _config(table, **train) -> dict:
    return {"name": "bag", "data": {"source": "csv", "path": str(table / "homes.csv"), "target": "price"},
            "model": {"family": "mlp", "hidden": [16], "bags": 3},
            "train": quick_train(epochs=4, lr=0.01, **train), "evaluate": {"baselines": False}}


def test_folds_hold_every_row_out_once_and_keep_the_classes_in_each():
    y = torch.tensor([0] * 10 + [1] * 5)
    held = folds(y, 5, seed=0, stratify=True)
    assert sorted(np.concatenate(held).tolist()) == list(range(15))
    assert all(sorted(y[h].tolist()) == [0, 0, 1] for h in held)  # two of one class, one of the other in each
    rare = folds(torch.tensor([0] * 12 + [1] * 2), 5, seed=0, stratify=True)  # a class rarer than the folds
    assert sorted(np.concatenate(rare).tolist()) == list(range(14))


@pytest.fixture(scope="module")
def bagged(table):
    return layerwise.train(_config(table), runs_dir=table / "runs", quiet=True)


def test_a_bag_predicts_the_mean_of_its_members_and_records_each(bagged, table):
    metrics = json.loads((bagged.path / "metrics.json").read_text())
    records = metrics["bagging"]["records"]
    assert [r["member"] for r in records] == [1, 2, 3] and all(r["epochs_run"] == 4 for r in records)
    rows = bagged.data.test.x[:7]
    model = layerwise.load_run(bagged.path).model.eval()
    x = bagged.preprocessing.inputs.batch(rows).float()
    with torch.no_grad():
        members = torch.stack([m(x) for m in model.bag])
        assert not torch.allclose(members[0], members[1])  # fitted on other rows, from another start
        torch.testing.assert_close(model(x), members.mean(0))
    assert model.members == 3 and bagged.config.model.bags == 3
    # scored on its test split: the members' folds are cut from the training and validation rows, and
    # the baselines' protocol names those rows too
    assert metrics["bagging"]["rows"] == len(bagged.data.train) + len(bagged.data.val)
    assert "Bagging" in (bagged.path / "report.html").read_text()


class StopInMember(Callback):
    """Ctrl-C at the end of the first epoch of the ``member``-th fit."""

    def __init__(self, member: int):
        self.member, self.fits = member, 0

    def on_fit_start(self, trainer) -> None:
        self.fits += 1

    def on_epoch_end(self, trainer, logs) -> None:
        if self.fits == self.member:
            raise KeyboardInterrupt


def test_an_interrupted_bag_resumes_at_its_member_and_ends_as_an_uninterrupted_one(bagged, table):
    runs = table / "interrupted"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        layerwise.train(_config(table), runs_dir=runs, quiet=True, callbacks=[StopInMember(2)])
    (run_dir,) = runs.iterdir()
    state = read_bag_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state is not None and len(state.weights) == 1  # member 1 kept, member 2 starts over
    with pytest.raises(ConfigError, match="train.epochs cannot change when a bag resumes"):
        layerwise.train(resume=run_dir, quiet=True, train__epochs=9)
    resumed = layerwise.train(resume=run_dir, quiet=True)
    for key, value in bagged.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert len(json.loads((run_dir / "metrics.json").read_text())["bagging"]["records"]) == 3


def test_a_bag_scored_on_validation_rows_never_folds_them_in(bagged):
    from layerwise.runs.bagging import rows_to_fold

    data = bagged.data
    assert rows_to_fold(data, "val") is data
    merged = rows_to_fold(data, "test")
    assert merged.val is None and merged.test is data.test
    torch.testing.assert_close(merged.train.x, torch.cat([data.train.x, data.val.x]))


def test_the_recipe_bags_small_tables_only():
    from layerwise.runs.config import load_config
    from layerwise.runs.recipes import BAG_MAX_ROWS, BAGS, bags

    config = load_config({"data": {"source": "csv", "path": "t.csv", "target": "y"}})
    assert bags(config, BAG_MAX_ROWS) == BAGS and bags(config, BAG_MAX_ROWS + 1) == 1
    assert bags(config.model_copy(update={"recipe": "fast"}), 100) == 1
    no_validation = config.model_copy(update={"data": config.data.model_copy(update={"val_fraction": 0.0})})
    assert bags(no_validation, 100) == 1  # no early stopping to vary
    fixed = load_config({"data": {"source": "csv", "path": "t.csv", "target": "y"}, "train": {"epochs": 10}})
    assert bags(fixed, 100) == 1  # the user asked for ten epochs of training, not fifty


def test_a_small_table_without_a_model_section_is_chosen_then_bagged(table):
    config = {"name": "auto", "data": {"source": "csv", "path": str(table / "homes.csv"), "target": "price"},
              "train": {"early_stopping": {"monitor": "val_loss", "patience": 1}, "progress": False},
              "evaluate": {"baselines": True}}
    run = layerwise.train(config, runs_dir=table / "auto", quiet=True)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["selection"]["chosen"] == run.config.model.family  # chosen on the validation split first
    assert run.config.model.bags == 5 and len(metrics["bagging"]["records"]) == 5  # then bagged by the recipe
    rows = metrics["bagging"]["rows"]
    # the baselines learnt from the members' rows
    assert metrics["baselines"]["protocol"].startswith(f"fitted on the run's training and validation splits (a bag's "
                                                       f"rows) ({rows} rows")
    report = (run.path / "report.html").read_text()
    assert "Family selection" in report and "Bagging" in report
    # the checkpoint keeps the choice too: a bag interrupted after it resumes with the record
    assert read_bag_checkpoint(run.path / "checkpoints" / "last.pt").selection == metrics["selection"]


@pytest.mark.parametrize("model, module, error, message", [
    ({"family": "autoencoder", "bags": 2}, None, ConfigError, "model.bags: a bag averages classifiers or regressors; "
                                                             "this run's task is reconstruction"),
    ({"family": "mlp", "bags": 2}, torch.nn.Linear(4, 1), ConfigError, "a module passed to train.. is one network"),
])
def test_what_a_bag_cannot_be_is_refused_on_one_line(table, model, module, error, message):
    config = {**_config(table), "model": model}
    with pytest.raises(error, match=message) as info:
        layerwise.train(config, model=module, runs_dir=table / "refused", quiet=True)
    assert "\n" not in str(info.value) and not (table / "refused").exists()


def test_a_bag_is_no_start_for_transfer_learning(bagged, table):
    config = {**_config(table), "model": {"family": "mlp", "hidden": [16], "init_from": str(bagged.path)}}
    with pytest.raises(ModelError, match="is a bag of members .model.bags.; a start is one network's weights"):
        layerwise.train(config, runs_dir=table / "start", quiet=True)


def test_build_model_refuses_a_bag_of_a_generative_family():
    from layerwise.data.spec import DataSpec
    from layerwise.models import FAMILIES, build_model

    spec = DataSpec(kind="tabular", input_shape=(4,), target="numeric", num_targets=4)
    config = FAMILIES.get("autoencoder").Config(family="autoencoder", bags=2)
    with pytest.raises(ModelError, match="the autoencoder family is generative: remove model.bags"):
        build_model(config, spec)


def test_cross_validation_fits_a_bag_member_by_member_like_train(table, capsys):
    config = {**_config(table), "model": {"family": "mlp", "hidden": [16], "bags": 2}}
    result = layerwise.cross_validate(config, folds=2)
    assert len(result["folds"]) == 2 and np.isfinite(result["mean"]["r2"])
    printed = capsys.readouterr().out
    assert printed.count("member 1/2:") == 2 and printed.count("member 2/2:") == 2  # each fold's bag


def test_freeze_and_layer_rates_name_a_members_layers(table):
    from layerwise.runs.config import load_config
    from layerwise.runs.prepare import prepare

    base = _config(table)
    prepared = prepare(load_config({**base, "train": {**base["train"], "freeze": ["inputs.*"]}}))
    for member in prepared.model.bag:  # every member freezes the same layers
        assert all(not p.requires_grad for p in member.inputs.parameters())
        assert all(p.requires_grad for p in member.head.parameters())
    for key in ("freeze", "layer_lr_scale"):
        value = ["encoder.*"] if key == "freeze" else {"encoder.*": 0.1}
        with pytest.raises(ConfigError, match=f"train.{key}: 'encoder.*' matches no parameter of this model; its "
                                              f"modules are body, head, inputs"):
            prepare(load_config({**base, "train": {**base["train"], key: value}}))
