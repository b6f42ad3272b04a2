"""Anomaly scores and latent codes of autoencoder and vae runs trained on digits without one class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import quick_train

import layerwise
from layerwise import RunError
from layerwise.cli import main
from layerwise.tools.anomaly import anomaly_scores, validation_threshold
from layerwise.tools.embed import embed

HELD_OUT = 0  # the class the models never see: the anomalies


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("anomaly")
    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8) pixels
    y = digits.target
    rng = np.random.default_rng(0)
    normal_idx = rng.permutation(np.nonzero(y != HELD_OUT)[0])
    train_idx, fresh_idx = normal_idx[:-150], normal_idx[-150:]  # 150 normal digits no split holds
    np.savez(tmp / "train.npz", x=x[train_idx], y=y[train_idx])
    odd = np.nonzero(y == HELD_OUT)[0][:60]
    both = np.concatenate([fresh_idx, odd])
    np.savez(tmp / "mixed.npz", x=x[both], y=y[both])
    runs_dir = tmp / "runs"

    def train(family, **model):
        cfg = {"name": family, "data": {"source": "npz", "path": str(tmp / "train.npz")},
               "model": {"family": family, **model}, "train": quick_train(epochs=20, lr=0.003, batch_size=64)}
        return layerwise.train(cfg, quiet=True, runs_dir=runs_dir)

    runs = {"autoencoder": train("autoencoder", hidden=[64], bottleneck=6),
            "vae": train("vae", hidden=[64], latent=4)}
    return tmp, runs


@pytest.mark.parametrize("family", ["autoencoder", "vae"])
def test_held_out_class_is_anomalous(setup, family):
    tmp, runs = setup
    run = runs[family]
    result = anomaly_scores(run, tmp / "mixed.npz", out=tmp / f"{family}.csv")
    # labels from the npz; the classes the run trained on are the normal ones
    assert result.metrics["anomalies"] == 60 and result.metrics["normal"] == 150
    assert result.metrics["roc_auc"] > 0.9, result.metrics
    assert 0 < result.metrics["pr_auc"] <= 1
    frame = pd.read_csv(tmp / f"{family}.csv")
    assert list(frame.columns[:3]) == ["id", "score", "is_anomaly"] and len(frame) == 210
    # naming the normal classes gives the same truth
    named = anomaly_scores(run, tmp / "mixed.npz", normal=[str(c) for c in range(1, 10)])
    assert named.metrics["roc_auc"] == result.metrics["roc_auc"]


def test_threshold_comes_from_validation(setup):
    tmp, runs = setup
    run = runs["autoencoder"]
    threshold, val_scores = validation_threshold(run, 0.9)
    assert len(val_scores) == len(run.data.val)
    assert threshold == pytest.approx(float(np.quantile(val_scores, 0.9)))
    result = anomaly_scores(run, tmp / "mixed.npz", quantile=0.9)
    assert result.threshold == pytest.approx(threshold)
    assert (result.is_anomaly == (result.scores > threshold)).all()
    recorded = layerwise.load_run(run.path).path / "anomaly.json"
    assert '"quantile": 0.9' in recorded.read_text()


def test_embed_codes_and_cli(setup, capsys):
    tmp, runs = setup
    assert embed(runs["vae"], tmp / "mixed.npz").codes.shape == (210, 4)
    out = tmp / "codes.csv"
    assert main(["embed", str(runs["autoencoder"].path), str(tmp / "mixed.npz"), "--out", str(out)]) == 0
    assert pd.read_csv(out).shape == (210, 7)  # id + 6 code columns
    assert main(["anomaly", str(runs["vae"].path), str(tmp / "mixed.npz"), "--out", str(tmp / "s.csv")]) == 0
    assert "roc_auc" in capsys.readouterr().out


def test_report_has_latent_space(setup):
    _, runs = setup
    for run in runs.values():
        report = run.report().read_text()
        assert "<h2>Latent space</h2>" in report or "Latent space" in report
        assert 'alt="test codes in 2-D, coloured by class"' in report
        assert 'alt="latent interpolation between two test images"' in report


def test_classifier_run_is_refused(tmp_path, capsys):
    cfg = {"data": {"source": "builtin", "name": "digits", "limit": 200},
           "model": {"family": "mlp", "hidden": [8]}, "train": quick_train(epochs=1)}
    run = layerwise.train(cfg, quiet=True, runs_dir=tmp_path)
    with pytest.raises(RunError, match="needs an autoencoder or vae run"):
        anomaly_scores(run, "unused.npz")
    assert main(["anomaly", str(run.path), "unused.npz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs an autoencoder or vae run" in err
    assert main(["embed", str(run.path), "unused.npz"]) == 2


def test_table_with_a_boolean_labels_column(tmp_path):
    from sklearn.datasets import load_iris

    cfg = {"data": {"name": "iris"}, "model": {"family": "autoencoder", "hidden": [16], "bottleneck": 2},
           "train": quick_train(epochs=3, lr=0.01)}
    run = layerwise.train(cfg, quiet=True, runs_dir=tmp_path)
    frame = load_iris(as_frame=True).frame
    odd = frame.iloc[:10].copy()
    odd.iloc[:, :4] *= 5  # flowers five times too large
    table = pd.concat([frame.iloc[10:40], odd])
    table["weird"] = [False] * 30 + [True] * 10
    table.to_csv(tmp_path / "flowers.csv", index=False)
    result = run.anomaly(tmp_path / "flowers.csv", labels_column="weird")
    assert result.metrics["anomalies"] == 10 and result.metrics["roc_auc"] > 0.9
    assert run.embed(tmp_path / "flowers.csv").codes.shape == (40, 2)
    with pytest.raises(layerwise.ConfigError, match="--labels-column: 'nope' is not a column"):
        run.anomaly(tmp_path / "flowers.csv", labels_column="nope")
