"""Recipes: what a tabular config leaves unset is chosen from the table, recorded, and never
overrides what the user wrote."""

from __future__ import annotations

import pytest
import yaml
from helpers import cli, write_csv

import layerwise
from layerwise import ConfigError
from layerwise.runs.config import load_config
from layerwise.runs import recipes
from layerwise.runs.recipes import batch_size
from layerwise.runs.training import prepare


def _prepared(path, **sections):
    raw = {"name": "r", "data": {"source": "csv", "path": str(path), "target": "target"}, **sections}
    return prepare(load_config(raw)).config


def test_only_the_family_gets_the_default_recipe(tmp_path):
    cfg = _prepared(write_csv(tmp_path, n=120), model={"family": "mlp"})
    assert cfg.recipe == "default"
    assert cfg.model.hidden == [256, 256, 256] and cfg.model.numeric_embedding == "periodic"
    assert cfg.train.optimizer == "adamw" and cfg.train.lr == 1e-3 and cfg.train.weight_decay == 1e-4
    assert cfg.train.batch_size == 32  # 84 training rows: small batches
    assert cfg.train.epochs == 200 and cfg.train.early_stopping.monitor == "val_loss"
    assert cfg.train.early_stopping.patience == 16 and cfg.train.early_stopping.restore_best


def test_what_the_user_wrote_wins(tmp_path):
    cfg = _prepared(write_csv(tmp_path, n=120), model={"family": "mlp", "hidden": [8]},
                    train={"optimizer": "sgd", "lr": 0.5, "epochs": 3, "batch_size": 7})
    assert cfg.model.hidden == [8] and cfg.model.numeric_embedding == "periodic"  # only the unset field
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == ("sgd", 0.5, 7, 3)
    assert cfg.train.weight_decay == 0.0  # AdamW's weight decay is not forced on the user's SGD
    assert cfg.train.early_stopping is None  # the user's epochs are run, not stopped early


def test_no_model_section_gets_the_recipes_family(tmp_path, monkeypatch):
    path = write_csv(tmp_path, n=120)
    assert _prepared(path).model.family == "tabm"
    monkeypatch.setattr(recipes, "TABM_MAX_ROWS", 50)  # 84 training rows: now a large table, the faster MLP
    assert _prepared(path).model.family == "mlp"
    assert _prepared(path, recipe="best").model.family == "tabm"  # best takes the time
    monkeypatch.undo()
    best = _prepared(path, recipe="best")
    assert best.model.family == "tabm" and best.train.early_stopping.patience == 24
    fast = _prepared(path, recipe="fast", model={"family": "resmlp"})
    assert (fast.model.width, fast.model.blocks, fast.train.epochs) == (128, 2, 30)


def test_without_a_validation_split_a_fixed_number_of_epochs(tmp_path):
    path = write_csv(tmp_path, n=120)
    cfg = _prepared(path, data={"source": "csv", "path": str(path), "target": "target", "val_fraction": 0})
    assert cfg.train.early_stopping is None and cfg.train.epochs == 60


def test_batch_size_grows_with_the_table():
    assert [batch_size(n) for n in (500, 2_000, 5_000, 20_000, 200_000)] == [32, 64, 128, 256, 512]


def test_a_recipe_on_images_is_refused_and_images_keep_their_defaults():
    with pytest.raises(ConfigError, match=r"^recipe: 'best' sizes tabular"):
        prepare(load_config({"recipe": "best", "data": {"source": "builtin", "name": "digits"}}))
    cfg = prepare(load_config({"data": {"source": "builtin", "name": "digits"}, "model": {"family": "mlp"}})).config
    assert cfg.model.hidden == [128, 64] and cfg.train.batch_size == 64 and cfg.train.early_stopping is None


def test_the_run_records_the_recipe_and_resumes_with_it(tmp_path):
    path = write_csv(tmp_path, n=120)
    run = layerwise.train({"name": "r", "data": {"source": "csv", "path": str(path), "target": "target"},
                           "model": {"family": "mlp"}, "train": {"max_steps": 4, "progress": False},
                           "evaluate": {"baselines": False}}, runs_dir=tmp_path / "runs", quiet=True)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["recipe"] == "default" and saved["model"]["hidden"] == [256, 256, 256]
    assert saved["train"]["early_stopping"]["patience"] == 16
    # the saved config is explicit: reloading it chooses nothing again
    again = prepare(load_config(saved)).config
    assert again.model == run.config.model and again.train == run.config.train


def test_config_with_data_prints_the_choice(tmp_path):
    path = write_csv(tmp_path, n=120)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "csv", "path": str(path), "target": "target"}}))
    code, out, err = cli("config", config, "--data", cwd=tmp_path)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert out.startswith("# model: chosen when training, by the lowest validation loss among mlp, tabm")
    assert resolved["model"]["family"] == "tabm" and resolved["model"]["k"] == 32
    assert resolved["task"]["name"] == "classification" and resolved["train"]["batch_size"] == 32
    code, out, _ = cli("config", config, cwd=tmp_path)  # without --data: the schema's defaults, no data read
    assert code == 0 and yaml.safe_load(out)["model"]["family"] == "cnn"
