"""The command line, run as a subprocess exactly as a user runs it."""

from __future__ import annotations

import yaml
from helpers import quick_train, run_dirs, tiny_mlp, write_yaml

import layerwise


def test_train_the_embedded_default(run_cli, tmp_path):
    code, out, err = run_cli("train", "--set", "train.epochs=1", "--set", "train.progress=false", "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    assert "digits-cnn: test metrics" in out  # the metrics table
    for metric in ("accuracy", "f1_macro", "roc_auc", "loss"):
        assert metric in out
    assert "report:" in out and "report.html" in out
    (run,) = run_dirs(tmp_path / "runs")  # the default runs dir, relative to the working directory
    assert (run / "report.html").is_file()
    loaded = layerwise.load_run(run)
    assert loaded.config.train.epochs == 1 and loaded.config.model.family == "cnn"
    assert len(loaded.history) == 1


def test_help_lists_the_commands(run_cli):
    code, out, err = run_cli("--help")
    assert code == 0, err
    for command in ("train", "evaluate", "predict", "cv", "models", "config"):
        assert command in out
    assert "--debug" in out
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "--resume" in out and "--set" in out


def test_config_prints_the_resolved_yaml(run_cli, tmp_path):
    write_yaml(tmp_path / "exp.yaml", {"name": "iris-mlp", "data": {"name": "iris"}, "model": tiny_mlp(),
                                       "train": quick_train()})
    code, out, err = run_cli("config", "exp.yaml", "--set", "train.epochs=7", "--set", "train.scheduler=cosine")
    assert code == 0, err
    printed = yaml.safe_load(out)
    expected = layerwise.load_config(tmp_path / "exp.yaml", ["train.epochs=7", "train.scheduler=cosine"])
    assert printed == expected.to_dict()
    assert printed["train"]["epochs"] == 7 and printed["train"]["scheduler"]["name"] == "cosine"
    assert printed["evaluate"]["batch_size"] == 512  # defaults are filled in
    assert layerwise.load_config(printed) == expected


def test_config_reference(run_cli):
    from layerwise.runs.reference import config_reference

    code, out, err = run_cli("config", "--reference")
    assert code == 0, err
    assert out == config_reference()


def test_version_and_usage_errors(run_cli, tmp_path):
    code, out, err = run_cli("--version")
    assert code == 0 and out.strip() == f"layerwise {layerwise.__version__}"
    write_yaml(tmp_path / "exp.yaml", {"data": {"name": "iris"}, "model": tiny_mlp()})
    code, out, err = run_cli("train", "exp.yaml", "--resume", "somewhere")
    assert code == 2
    assert "either CONFIG or --resume" in err and "Traceback" not in err
