"""Baselines in tabular runs (runs/baselines.py): sklearn models fitted on the run's own training
split, scored by the network's own evaluator, in metrics.json, the report and the CLI's summary."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from helpers import quick_train, tiny_mlp, write_csv, write_yaml

import layerwise
from layerwise.runs.baselines import baseline_line

CLASSIFICATION_KEYS = {"accuracy", "balanced_accuracy", "precision_macro", "precision_weighted", "recall_macro",
                       "recall_weighted", "f1_macro", "f1_weighted", "roc_auc", "loss"}


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    """A CSV with numeric columns and a colour column encoded as an embedding index."""
    folder = tmp_path_factory.mktemp("baselines-class")
    path = write_csv(folder, n=150)
    cfg = {"data": {"source": "csv", "path": str(path), "target": "target", "categorical_encoding": "embedding"},
           "model": tiny_mlp(), "train": quick_train(epochs=3)}
    return layerwise.train(cfg, runs_dir=folder / "runs", quiet=True)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """Two numeric targets (Ridge fits both at once, HistGradientBoosting one model each)."""
    folder = tmp_path_factory.mktemp("baselines-regression")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    kind = rng.choice(["a", "b", "c"], 150)
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "kind": kind,
                          "u": x.sum(1) * 10 + 5 * (kind == "a") + rng.normal(size=150), "v": x[:, 0] * 3 + 100})
    frame.to_csv(folder / "multi.csv", index=False)
    cfg = {"data": {"source": "csv", "path": str(folder / "multi.csv"), "target": ["u", "v"]},
           "model": tiny_mlp(), "train": quick_train(epochs=3, lr=0.01)}
    return layerwise.train(cfg, runs_dir=folder / "runs", quiet=True)


def _design(x: np.ndarray, slots) -> np.ndarray:
    """The linear model's inputs, built here independently: each embedding code column one-hot."""
    keep = [j for j in range(x.shape[1]) if j not in {p for p, _ in slots}]
    return np.hstack([x[:, keep]] + [np.eye(card)[x[:, p].astype(int)] for p, card in slots])


def test_classification_baselines_are_scored_like_the_network(classification_run):
    metrics = classification_run.metrics
    baselines = metrics["baselines"]
    assert set(metrics["metrics"]) == CLASSIFICATION_KEYS
    assert [k for k in baselines if k != "protocol"] == ["logistic_regression", "hist_gradient_boosting"]
    for name in ("logistic_regression", "hist_gradient_boosting"):
        entry = baselines[name]
        assert set(entry["metrics"]) == set(metrics["metrics"])  # the same evaluator and loss
        assert all(0.0 <= entry["metrics"][k] <= 1.0 for k in CLASSIFICATION_KEYS - {"loss"})
        assert entry["metrics"]["loss"] > 0 and entry["fit_s"] > 0
        assert entry["metrics"]["accuracy"] > 0.6  # the target is learnable from a and the colour
    data = classification_run.data
    assert baselines["protocol"] == (f"fitted on the run's training split ({len(data.train)} rows, the run's "
                                     f"preprocessing), scored on the test split ({len(data.test)} rows)")


def test_baselines_were_fitted_on_the_runs_training_split(classification_run):
    """Refitting sklearn on bundle.train (the embedding column one-hot, or categorical for the trees)
    gives the recorded accuracies: the same rows, the same encoding, scored on the same split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    data, spec = classification_run.data, classification_run.spec
    assert len(spec.categorical) == 1  # the colour, as an embedding index
    train_x, test_x = data.train.x.numpy(), data.test.x.numpy()
    train_y, test_y = data.train.y.numpy(), data.test.y.numpy()
    baselines = classification_run.metrics["baselines"]

    logistic = LogisticRegression(max_iter=1000).fit(_design(train_x, spec.categorical), train_y)
    expected = logistic.score(_design(test_x, spec.categorical), test_y)
    assert baselines["logistic_regression"]["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-6)

    mask = np.zeros(train_x.shape[1], dtype=bool)
    mask[spec.categorical[0][0]] = True
    trees = HistGradientBoostingClassifier(categorical_features=mask, random_state=classification_run.config.train.seed)
    expected = trees.fit(train_x, train_y).score(test_x, test_y)
    assert baselines["hist_gradient_boosting"]["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_regression_baselines_on_the_original_scale(regression_run):
    from sklearn.linear_model import Ridge

    metrics = regression_run.metrics
    baselines = metrics["baselines"]
    assert [k for k in baselines if k != "protocol"] == ["ridge", "hist_gradient_boosting"]
    for entry in (baselines["ridge"], baselines["hist_gradient_boosting"]):
        scores = entry["metrics"]
        assert set(scores) == set(metrics["metrics"]) == {"mae", "mse", "rmse", "r2", "loss"}
        assert scores["r2"] <= 1.0 and scores["mae"] >= 0 and scores["rmse"] == pytest.approx(scores["mse"] ** 0.5)
    # Ridge refitted on the scaled training targets, predictions scaled back: the recorded R²
    data, scaler = regression_run.data, regression_run.preprocessing.scaler
    ridge = Ridge(alpha=1.0).fit(data.train.x.numpy(), data.train.y.numpy())
    pred = scaler.inverse(__import__("torch").as_tensor(ridge.predict(data.test.x.numpy()), dtype=data.test.y.dtype))
    true = scaler.inverse(data.test.y)
    assert baselines["ridge"]["metrics"]["r2"] == pytest.approx(skm.r2_score(true.numpy(), pred.numpy()), abs=1e-4)
    assert baselines["ridge"]["metrics"]["r2"] > 0.9  # u is linear in the inputs: not scored on scaled units
    assert baselines["ridge"]["metrics"]["mae"] > 0.2  # ...and the errors are in the targets' units (noise 1)


def test_report_has_the_baselines_section_with_a_chart(classification_run):
    html = (classification_run.path / "report.html").read_text()
    section = html[html.index("<h2>Baselines</h2>"):]
    section = section[: section.index("<h2>", 5)]
    assert '<img alt="accuracy: network vs baselines"' in section
    assert "logistic regression" in section and "HistGradientBoosting" in section
    assert re.search(r"The network (is [\d.]+ points of accuracy (above|below)|ties)", section)
    assert "scored on the test split" in section


def test_summary_line_and_evaluate_on_new_data(classification_run, tmp_path):
    line = baseline_line(classification_run.metrics, "accuracy")
    assert line.startswith("baselines (accuracy, test split): network ")
    assert re.search(r" · logistic regression [01]\.\d{4} · HistGradientBoosting [01]\.\d{4}$", line)
    # evaluate --data scores the network alone; metrics.json keeps the baselines of the run's own split
    before = classification_run.metrics
    result = classification_run.evaluate(data=write_csv(tmp_path, "new.csv", n=40, seed=3))
    assert set(result) == CLASSIFICATION_KEYS
    assert classification_run.metrics == before


def test_baselines_false_leaves_them_out(tmp_path):
    cfg = {"data": {"name": "iris"}, "model": tiny_mlp(), "train": quick_train(epochs=1),
           "evaluate": {"baselines": False}}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    assert "baselines" not in run.metrics
    assert "<h2>Baselines</h2>" not in (run.path / "report.html").read_text()
    assert baseline_line(run.metrics, "accuracy") is None


def test_image_run_has_no_baselines(tmp_path, make_image_folder):
    root = make_image_folder(classes=(0, 1), per_class=8)
    cfg = {"data": {"source": "image_folder", "path": str(root), "image_size": 8},
           "model": {"family": "cnn", "channels": [4]}, "train": quick_train(epochs=1)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    assert "baselines" not in run.metrics


def test_a_failing_baseline_is_recorded_and_the_run_completes(tmp_path):
    """One training row: iris keeps its three named classes, but a classifier needs two in training."""
    cfg = {"data": {"name": "iris", "limit": 1}, "model": tiny_mlp(), "train": quick_train(epochs=1)}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    for name in ("logistic_regression", "hist_gradient_boosting"):
        assert run.metrics["baselines"][name] == {
            "error": "ValueError: the training split holds a single class; a classifier needs at least two"}
    assert (run.path / "report.html").is_file() and "accuracy" in run.metrics["metrics"]
    assert "logistic regression failed" in baseline_line(run.metrics, "accuracy")


def test_import_layerwise_does_not_import_sklearn():
    code = "import sys, layerwise; print(any(m.startswith('sklearn') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_cli_train_prints_the_baselines_line(run_cli, tmp_path):
    config = write_yaml(tmp_path / "iris.yaml", {"data": {"name": "iris"}, "model": tiny_mlp(),
                                                 "train": quick_train(epochs=1)})
    code, out, err = run_cli("train", config, "--quiet")
    assert code == 0, err
    assert re.search(r"baselines \(accuracy, test split\): network [\d.]+ · logistic regression [\d.]+ · "
                     r"HistGradientBoosting [\d.]+", out)


def test_a_compressed_run_keeps_the_baselines_of_its_origin(classification_run):
    result = classification_run.compress(quantize="dynamic")
    compressed = layerwise.load_run(result.path)
    assert compressed.metrics["baselines"] == classification_run.metrics["baselines"]
    assert "<h2>Baselines</h2>" in (result.path / "report.html").read_text()
