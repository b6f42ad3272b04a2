"""Evaluation: streaming metrics equal scikit-learn's, predict agrees with evaluate, cross-validation,
and the run directory holds everything needed to use the model later."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import quick_train, run_dirs, tiny_mlp, write_npz, write_yaml
from sklearn import metrics as skm

import layerwise
from layerwise.data.preprocess import TargetScaler
from layerwise.tasks.evaluation import ClassificationEvaluator, RegressionEvaluator


def _stream(evaluator, outputs: torch.Tensor, y: torch.Tensor, batch: int = 37):
    for i in range(0, len(y), batch):
        evaluator.update(outputs[i:i + batch], y[i:i + batch])
    return evaluator.compute()


def _logits(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy logits that are right more often than not, so every metric is informative."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen)
    logits[torch.arange(n), y] += 1.0
    return logits, y


@pytest.mark.parametrize("classes", [2, 4])
def test_classification_metrics_equal_sklearn(classes):
    logits, y = _logits(503, classes)
    result = _stream(ClassificationEvaluator(classes, auc_thresholds=200), logits, y)
    pred = logits.argmax(1).numpy()
    true = y.numpy()

    assert result["accuracy"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(true, pred), abs=1e-6)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        for avg in ("macro", "weighted"):
            expected = fn(true, pred, average=avg, zero_division=0)
            assert result[f"{name}_{avg}"] == pytest.approx(expected, abs=1e-6), f"{name}_{avg}"
        per_class = fn(true, pred, average=None, zero_division=0)
        assert [row[name] for row in result.details["per_class"]] == pytest.approx(per_class.tolist(), abs=1e-6)
    assert result.details["confusion_matrix"] == skm.confusion_matrix(true, pred).tolist()
    assert [row["support"] for row in result.details["per_class"]] == np.bincount(true, minlength=classes).tolist()

    proba = torch.softmax(logits, 1).numpy()
    if classes == 2:
        expected_auc = skm.roc_auc_score(true, proba[:, 1])
    else:
        expected_auc = skm.roc_auc_score(true, proba, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(expected_auc, abs=0.01)


def test_classification_metrics_with_an_absent_class():
    """A class never predicted and never present is left out of macro averages, as sklearn does
    when it infers the labels from the data; its per-class scores are 0."""
    logits, y = _logits(200, 3, seed=1)
    y[y == 2] = 0
    logits[:, 2] = -10
    result = _stream(ClassificationEvaluator(3), logits, y)
    pred = logits.argmax(1).numpy()
    assert result["f1_macro"] == pytest.approx(
        skm.f1_score(y.numpy(), pred, average="macro", zero_division=0), abs=1e-6)
    assert result["precision_weighted"] == pytest.approx(
        skm.precision_score(y.numpy(), pred, average="weighted", zero_division=0), abs=1e-6)
    assert result.details["per_class"][2]["support"] == 0
    assert result.details["per_class"][2]["f1"] == 0.0


@pytest.mark.parametrize("targets", [1, 3])
def test_regression_metrics_equal_sklearn(targets):
    gen = torch.Generator().manual_seed(0)
    raw_y = np.random.default_rng(0).normal(loc=50, scale=10, size=(301, targets))
    scaler = TargetScaler.fit(raw_y)
    y = torch.from_numpy(scaler.transform(raw_y))
    outputs = y + 0.3 * torch.randn(y.shape, generator=gen)
    result = _stream(RegressionEvaluator(targets, scaler), outputs, y)
    pred = scaler.inverse(outputs).numpy()
    true = raw_y
    if targets == 1:
        pred, true = pred[:, 0], true[:, 0]
    mse = skm.mean_squared_error(true, pred)
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-4)
    assert result["mse"] == pytest.approx(mse, rel=1e-4)
    assert result["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-4)
    assert result["r2"] == pytest.approx(skm.r2_score(true, pred), abs=1e-4)


# -- trained runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    """An MLP trained on an iris .npz that carries its own test split, plus a test-only .npz."""
    from sklearn.datasets import load_iris

    folder = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:120], order[120:]
    data = write_npz(folder, "iris.npz", x=x[train].astype(np.float32), y=y[train],
                     x_test=x[test].astype(np.float32), y_test=y[test])
    test_file = write_npz(folder, "test.npz", x=x[test].astype(np.float32), y=y[test])
    cfg = {"name": "iris", "data": {"source": "npz", "path": str(data)}, "model": tiny_mlp(),
           "train": quick_train(epochs=4, lr=0.01, checkpoint_every=3)}
    run = layerwise.train(cfg, runs_dir=folder / "runs", quiet=True)
    return run, test_file, folder


def test_predict_agrees_with_evaluate(iris_run, run_cli, tmp_path):
    run, test_file, _ = iris_run
    code, out, err = run_cli("predict", run.path, test_file, "--out", "preds.csv")
    assert code == 0, err
    assert "predictions:" in out
    frame = pd.read_csv(tmp_path / "preds.csv")
    assert list(frame.columns) == ["id", "true", "pred", "prob_0", "prob_1", "prob_2"]
    assert np.allclose(frame[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1.0, atol=1e-5)
    accuracy_from_predict = float((frame["true"] == frame["pred"]).mean())

    code, out, err = run_cli("evaluate", run.path, "--data", test_file, "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["metrics"]["accuracy"] == pytest.approx(accuracy_from_predict, abs=1e-6)
    # the run's own test split is the same 30 samples
    assert run.evaluate()["accuracy"] == pytest.approx(accuracy_from_predict, abs=1e-6)
    assert run.metrics["metrics"]["accuracy"] == pytest.approx(accuracy_from_predict, abs=1e-6)
    assert evaluated["details"]["confusion_matrix"] == run.metrics["details"]["confusion_matrix"]


def test_run_directory_contents(iris_run):
    from safetensors import safe_open

    run, _, _ = iris_run
    path = run.path
    for name in ("config.yaml", "data.json", "model.safetensors", "checkpoints/last.pt", "history.csv",
                 "metrics.json", "report.html"):
        assert (path / name).is_file(), name

    assert layerwise.load_config(path / "config.yaml") == run.config
    assert run.config.task == "classification"  # the resolved task is saved

    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
        names = set(fh.keys())
    assert meta["family"] == "mlp"
    assert json.loads(meta["model_config"]) == run.config.model.model_dump(mode="json")
    spec = json.loads(meta["spec"])
    assert spec["input_shape"] == [4] and spec["num_classes"] == 3
    assert names == set(run.model.state_dict())

    with open(path / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(rows[0])

    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["training"]["epochs_run"] == 4 and metrics["training"]["stop_reason"] == "completed"
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0

    report = (path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in report  # figures are embedded
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report), "the report must be self-contained"
    assert "<script src" not in report and "<link" not in report.replace("<link rel=\"icon\"", "")
    assert "Confusion matrix" in report and "accuracy" in report


def test_load_run_predicts_like_the_trained_run(iris_run):
    from sklearn.datasets import load_iris

    run, test_file, _ = iris_run
    loaded = layerwise.load_run(run.path)
    x = load_iris().data[:25]
    a, b = run.predict(x), loaded.predict(x)
    assert np.array_equal(a["label"], b["label"])
    assert np.allclose(a["proba"], b["proba"], atol=1e-7)
    assert a["proba"].shape == (25, 3)
    from_file = loaded.predict(test_file)
    assert len(from_file["label"]) == 30 and "true" in from_file
    assert loaded.history == run.history


def test_load_run_of_a_missing_or_foreign_folder(tmp_path):
    with pytest.raises(layerwise.RunError, match="run directory not found"):
        layerwise.load_run(tmp_path / "nothing")
    with pytest.raises(layerwise.RunError, match="not a run directory"):
        layerwise.load_run(tmp_path)


def test_regression_run_predicts_on_the_original_scale(tmp_path):
    run = layerwise.train({"data": {"name": "diabetes"}, "model": tiny_mlp(hidden=[32]),
                           "train": quick_train(epochs=30, lr=0.01)}, runs_dir=tmp_path, quiet=True)
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    values = run.predict(data.data[:50])["value"]
    assert values.shape == (50, 1)
    assert 60 < values.mean() < 250  # targets range 25..346: predictions are not standardized
    assert run.metrics["metrics"]["r2"] > 0.0  # better than predicting the mean


def test_multi_target_regression_evaluate_matches_predict(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "kind": rng.choice(["a", "b"], 90),
                          "u": x.sum(1) * 10 + 5, "v": x[:, 0] * 3 + 100})
    frame.to_csv(tmp_path / "multi.csv", index=False)
    cfg = {"data": {"source": "csv", "path": str(tmp_path / "multi.csv"), "target": ["u", "v"]},
           "model": tiny_mlp(), "train": quick_train(epochs=3, lr=0.01)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    result = run.evaluate(data=tmp_path / "multi.csv")
    preds = pd.read_csv(run.predict_to_csv(tmp_path / "multi.csv", tmp_path / "preds.csv"))
    assert list(preds.columns) == ["id", "true_u", "true_v", "pred_u", "pred_v"]
    true, pred = preds[["true_u", "true_v"]].to_numpy(), preds[["pred_u", "pred_v"]].to_numpy()
    assert np.allclose(true, frame[["u", "v"]].to_numpy())
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-4)
    assert result["r2"] == pytest.approx(skm.r2_score(true, pred), abs=1e-4)


def test_image_folder_run_evaluates_and_predicts_by_folder_name(tmp_path, make_image_folder, run_cli):
    """Class folders with names: evaluate --data on such a folder, predictions use the names."""
    root = make_image_folder("shapes", classes=(0, 1), per_class=12)
    (root / "0").rename(root / "zero")
    (root / "1").rename(root / "one")
    cfg = {"data": {"source": "image_folder", "path": str(root), "image_size": 8},
           "model": {"family": "cnn", "channels": [4]}, "train": quick_train(epochs=2)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    assert run.spec.class_names == ["one", "zero"]
    result = run.evaluate(data=root)
    assert sum(row["support"] for row in result.details["per_class"]) == 24
    out = run.predict_to_csv(root, tmp_path / "preds.csv")
    frame = pd.read_csv(out)
    assert set(frame["pred"]) <= {"one", "zero"} and set(frame["true"]) == {"one", "zero"}
    assert float((frame["true"] == frame["pred"]).mean()) == pytest.approx(result["accuracy"], abs=1e-6)
    one_image = run.predict(next((root / "zero").glob("*.png")))
    assert one_image["proba"].shape == (1, 2)


# -- cross-validation ------------------------------------------------------------------------


def test_cross_validate_iris():
    result = layerwise.cross_validate({"data": {"name": "iris"}, "model": tiny_mlp(),
                                       "train": quick_train(epochs=3, lr=0.02)}, folds=3)
    assert len(result["folds"]) == 3
    for key in ("accuracy", "f1_macro", "loss"):
        assert key in result["mean"] and key in result["std"]
        values = [fold[key] for fold in result["folds"]]
        assert result["mean"][key] == pytest.approx(np.mean(values))
        assert result["std"][key] == pytest.approx(np.std(values, ddof=1))
    assert all(0 <= fold["accuracy"] <= 1 for fold in result["folds"])
    assert [row[0] for row in result.summary()] == list(result["mean"])


def test_cross_validate_regression():
    result = layerwise.cross_validate({"data": {"name": "diabetes"}, "model": tiny_mlp(),
                                       "train": quick_train(epochs=2)}, folds=2)
    assert len(result["folds"]) == 2
    assert {"mae", "rmse", "r2"} <= set(result["mean"])


def test_cross_validate_needs_two_folds():
    with pytest.raises(layerwise.ConfigError, match="--folds"):
        layerwise.cross_validate({"data": {"name": "iris"}, "model": tiny_mlp()}, folds=1)


def test_cli_cv(tmp_path, run_cli, runs_dir):
    config = write_yaml(tmp_path / "cv.yaml", {"name": "iris-cv", "data": {"name": "iris"}, "model": tiny_mlp(),
                                               "train": quick_train(epochs=2)})
    code, out, err = run_cli("cv", config, "--folds", "3", "--runs-dir", runs_dir, "--set", "train.lr=0.02")
    assert code == 0, err
    assert "3-fold cross-validation" in out
    assert "accuracy" in out and "±" in out
    assert out.count("fold ") >= 3  # one progress line per fold
    (cv_dir,) = run_dirs(runs_dir)
    saved = json.loads((cv_dir / "cv.json").read_text())
    assert len(saved["folds"]) == 3 and saved["config"]["train"]["lr"] == 0.02
