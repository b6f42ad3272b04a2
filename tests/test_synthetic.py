"""The synthetic data source: a classifier trains on a generative run's samples and is tested on the
generator's real test split; mixing with real data, labelling an unconditional run's samples, the
cache, and one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import layerwise
from layerwise.core.errors import DataError

TRAIN = {"epochs": 1, "batch_size": 50, "progress": False, "device": "cpu"}


def _blobs(tmp_path, n=600):
    """Two well separated classes in three columns (one categorical): easy to generate, easy to classify."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, n)
    frame = pd.DataFrame({"x1": rng.normal(0, 1, n) + 4 * label, "x2": rng.normal(0, 1, n) - 3 * label,
                          "shade": np.where(rng.random(n) < 0.9, np.where(label == 1, "dark", "light"), "mid"),
                          "label": np.where(label == 1, "yes", "no")})
    path = tmp_path / "blobs.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def digits_gan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("syn")
    return layerwise.train({"name": "gan", "data": {"source": "builtin", "name": "digits", "limit": 200},
                            "model": {"family": "gan", "channels": [16, 8], "latent": 8, "conditional": True},
                            "train": dict(TRAIN)}, quiet=True, runs_dir=tmp / "runs")


def test_tabular_gan_samples_train_a_classifier_that_works_on_real_data(tmp_path):
    """End to end: conditional GAN on a table -> 2,000 samples -> an MLP trained only on them is
    scored on the real test split, and it must have learnt the classes from the samples."""
    gan = layerwise.train({"name": "gan", "data": {"source": "csv", "path": str(_blobs(tmp_path)), "target": "label"},
                           "model": {"family": "gan", "hidden": [32, 32], "latent": 4, "conditional": True},
                           "train": {**TRAIN, "epochs": 40, "batch_size": 64}}, quiet=True, runs_dir=tmp_path / "runs")
    clf = layerwise.train({"name": "tstr", "data": {"source": "synthetic", "run": str(gan.path), "n": 2000},
                           "model": {"family": "mlp", "hidden": [16]}, "train": {**TRAIN, "epochs": 5}},
                          quiet=True, runs_dir=tmp_path / "runs")
    assert clf.config.task == "classification"
    data = clf.data
    assert len(data.train) + len(data.val) == 2000
    assert data.train.y.bincount().tolist()[0] == pytest.approx(len(data.train) / 2, rel=0.1)  # classes balanced
    real_test = gan.data.test
    assert len(data.test) == len(real_test)  # the generator's real test rows, not generated ones
    assert torch.equal(data.test.y, real_test.y)
    assert clf.metrics["split"] == "test" and clf.metrics["metrics"]["accuracy"] > 0.85


def test_image_samples_test_on_the_real_test_split_and_are_cached(digits_gan, tmp_path):
    cfg = {"name": "tstr", "data": {"source": "synthetic", "run": str(digits_gan.path), "n": 120},
           "model": {"family": "mlp", "hidden": [16]}, "train": dict(TRAIN)}
    clf = layerwise.train(cfg, quiet=True, runs_dir=tmp_path / "runs")
    assert len(clf.data.train) + len(clf.data.val) == 120
    assert clf.data.train.x.dtype == torch.uint8 and tuple(clf.data.train.x.shape[1:]) == (1, 8, 8)
    assert torch.equal(clf.data.test.x, digits_gan.data.test.x)  # real test images, as the gan split them
    cached = list((digits_gan.path / "synthetic").glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = layerwise.load_run(clf.path).data  # read again: from the cache
    assert torch.equal(again.train.x, clf.data.train.x) and cached[0].stat().st_mtime_ns == stamp


def test_classes_the_samples_miss_are_still_classes_of_the_classifier(tmp_path):
    """An integer-labelled table without class names (as MNIST's IDX files are): 2 samples of a
    3-class conditional gan show classes 0 and 1 only, while the real test split has all three."""
    rng = np.random.default_rng(0)
    label = np.arange(90) % 3
    frame = pd.DataFrame({"x1": rng.normal(0, 1, 90) + 3 * label, "x2": rng.normal(0, 1, 90), "label": label})
    frame.to_csv(tmp_path / "three.csv", index=False)
    gan = layerwise.train({"name": "gan", "data": {"source": "csv", "path": str(tmp_path / "three.csv"),
                                                   "target": "label"},
                           "model": {"family": "gan", "hidden": [8], "latent": 2, "conditional": True},
                           "train": dict(TRAIN)}, quiet=True, runs_dir=tmp_path / "runs")
    clf = layerwise.train({"name": "few", "data": {"source": "synthetic", "run": str(gan.path), "n": 2,
                                                   "val_fraction": 0.0},
                           "model": {"family": "mlp", "hidden": [4]}, "train": dict(TRAIN)},
                          quiet=True, runs_dir=tmp_path / "runs")
    assert sorted(set(clf.data.train.y.tolist())) == [0, 1]
    assert clf.spec.num_classes == 3 and set(clf.data.test.y.tolist()) == {0, 1, 2}
    assert 0 <= clf.evaluate()["accuracy"] <= 1


def test_real_true_adds_the_generators_real_training_samples(digits_gan, tmp_path):
    cfg = {"name": "mix", "data": {"source": "synthetic", "run": str(digits_gan.path), "n": 100, "real": True},
           "model": {"family": "mlp", "hidden": [16]}, "train": dict(TRAIN)}
    clf = layerwise.train(cfg, quiet=True, runs_dir=tmp_path / "runs")
    real = digits_gan.data
    assert len(clf.data.train) + len(clf.data.val) == 100 + len(real.train) + len(real.val)


def test_unconditional_runs_need_a_labelling_classifier(tmp_path):
    digits = {"source": "builtin", "name": "digits", "limit": 200}
    vae = layerwise.train({"name": "vae", "data": digits, "model": {"family": "vae", "hidden": [32], "latent": 4},
                           "train": dict(TRAIN)}, quiet=True, runs_dir=tmp_path / "runs")
    clf_cfg = {"name": "clf", "data": digits, "model": {"family": "mlp", "hidden": [16]}, "train": dict(TRAIN)}
    labeller = layerwise.train(clf_cfg, quiet=True, runs_dir=tmp_path / "runs")
    synthetic = {"source": "synthetic", "run": str(vae.path), "n": 60}
    with pytest.raises(DataError, match="data.label_with: .*unconditional vae"):
        layerwise.train({**clf_cfg, "data": synthetic}, quiet=True, runs_dir=tmp_path / "runs")
    run = layerwise.train({**clf_cfg, "data": {**synthetic, "label_with": str(labeller.path)}}, quiet=True,
                          runs_dir=tmp_path / "runs")
    # every sample carries the label the classifier predicts for it
    data = run.data
    samples = torch.cat([data.train.x, data.val.x])
    labels = torch.cat([data.train.y, data.val.y])
    predicted = labeller.predict(samples.numpy())["label"]
    assert np.array_equal(predicted, labels.numpy())


def test_bad_synthetic_configs_are_one_line_errors(digits_gan, tmp_path, run_cli):
    base = {"model": {"family": "mlp"}, "train": dict(TRAIN)}
    with pytest.raises(DataError, match="data.run: run directory not found"):
        layerwise.train({**base, "data": {"source": "synthetic", "run": str(tmp_path / "nope")}}, quiet=True,
                        runs_dir=tmp_path / "runs")
    with pytest.raises(DataError, match="synthetic data trains classifiers"):
        layerwise.train({**base, "task": "regression", "data": {"source": "synthetic", "run": str(digits_gan.path)}},
                        quiet=True, runs_dir=tmp_path / "runs")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: synthetic, run: {tmp_path / 'nope'}}}\nmodel: {{family: mlp}}\n")
    code, out, err = run_cli("train", cfg)
    assert code == 2 and "data.run: run directory not found" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
