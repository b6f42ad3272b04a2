"""Sample quality of generative runs: the Fréchet distance itself, the classifier's penultimate
features, per-class accuracy / class shares, train-on-synthetic next to train-on-real, quality.json,
the report section and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import layerwise
from layerwise.core.errors import RunError
from layerwise.tools.quality import frechet_distance, penultimate_features

DIGITS = {"source": "builtin", "name": "digits", "limit": 300}
TRAIN = {"epochs": 1, "batch_size": 50, "progress": False, "device": "cpu"}


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    shift, scale = np.array([1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5])
    b = rng.normal(size=(20000, 3)) * scale + shift
    expected = (shift ** 2).sum() + (1 + scale ** 2 - 2 * scale).sum()  # diagonal covariances
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")

    def fit(name, model, epochs=1):
        cfg = {"name": name, "data": dict(DIGITS), "model": model, "train": {**TRAIN, "epochs": epochs}}
        return layerwise.train(cfg, quiet=True, runs_dir=tmp / "runs")

    return {"gan": fit("gan", {"family": "gan", "channels": [16, 8], "latent": 8, "conditional": True}),
            "vae": fit("vae", {"family": "vae", "hidden": [32], "latent": 4}),
            "clf": fit("clf", {"family": "mlp", "hidden": [32]}, epochs=5)}


def test_penultimate_features_are_what_the_head_reads(runs):
    clf = runs["clf"]
    x = clf.data.test.x[:7]
    features, logits = penultimate_features(clf, x.numpy())
    assert features.shape == (7, clf.model.head.in_features) and logits.shape == (7, 10)
    head = clf.model.head
    with torch.no_grad():
        again = head(torch.as_tensor(features, dtype=torch.float32)).numpy()
    assert np.allclose(again, logits, atol=1e-4)


def test_conditional_gan_quality_json_report_and_tstr(runs):
    gan, clf = runs["gan"], runs["clf"]
    result = gan.quality(clf.path, n=60, tstr_n=100)
    assert result.conditional and result.feature_dim == clf.model.head.in_features
    assert set(result.per_class_accuracy) == {str(c) for c in range(10)} | {"mean"}
    assert sum(result.class_shares.values()) == pytest.approx(1.0)
    # one epoch of a tiny GAN is far from the real images; two real sets are close
    assert result.frechet_distance > result.frechet_real > 0
    tstr = result.tstr
    synthetic, real = layerwise.load_run(tstr["synthetic_run"]), layerwise.load_run(tstr["real_run"])
    assert synthetic.config.data.source == "synthetic" and synthetic.config.model == clf.config.model
    assert len(synthetic.data.train) + len(synthetic.data.val) == 100
    assert torch.equal(synthetic.data.test.x, clf.data.test.x)  # both scored on the same real test images
    assert len(real.data.train) == 90 and real.config.data.source == "builtin"
    assert tstr["classifier_accuracy"] == clf.metrics["metrics"]["accuracy"]
    saved = json.loads((gan.path / "quality" / "quality.json").read_text())
    assert saved["frechet_distance"] == result.frechet_distance
    report = (gan.path / "report.html").read_text()
    assert "Sample quality" in report and "quality/samples.png" in report


def test_unconditional_vae_gets_class_shares_and_labelled_tstr(runs):
    result = runs["vae"].quality(runs["clf"].path, n=40, tstr_n=60)
    assert not result.conditional and result.per_class_accuracy is None
    synthetic = layerwise.load_run(result.tstr["synthetic_run"])
    assert synthetic.config.data.label_with == str(runs["clf"].path)


def test_refusals_and_cli(runs, run_cli, tmp_path):
    with pytest.raises(RunError, match="quality scores the samples of vae, gan and diffusion runs"):
        runs["clf"].quality(n=20)
    code, out, err = run_cli("quality", runs["gan"].path, "--classifier", runs["clf"].path, "--n", 30,
                             "--no-tstr", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["samples"] == 30 and payload["tstr"] is None and payload["frechet_distance"] > 0
    code, out, err = run_cli("quality", runs["gan"].path, "--classifier", runs["vae"].path, "--no-tstr")
    assert code == 2 and err.count("\n") == 1 and "is a vae run" in err


def test_tabular_gan_quality_trains_its_own_classifier(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    label = rng.integers(0, 2, n)
    import pandas as pd

    frame = pd.DataFrame({"a": rng.normal(0, 1, n) + 3 * label, "b": rng.normal(0, 1, n),
                          "kind": np.where(label == 1, "x", "y"), "label": label})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = {"source": "csv", "path": str(tmp_path / "t.csv"), "target": "label"}
    gan = layerwise.train({"name": "tgan", "data": data,
                           "model": {"family": "gan", "hidden": [16], "latent": 4, "conditional": True},
                           "train": {**TRAIN, "epochs": 3}}, quiet=True, runs_dir=tmp_path / "runs")
    result = gan.quality(n=50, tstr_n=80)
    clf = layerwise.load_run(result.classifier)
    assert clf.path.parent == gan.path / "quality" and clf.config.model.family == "mlp"
    assert clf.config.data.source == "csv" and result.feature_dim == clf.model.head.in_features
    assert set(result.per_class_accuracy) == {"0", "1", "mean"} and result.tstr["test_samples"] == len(gan.data.test)
    again = gan.quality(n=50, tstr=False)  # a second call reuses the classifier it trained
    assert again.classifier == result.classifier and again.tstr is None
