"""Explanations (`layerwise explain`): every Captum method on a tiny digits CNN, attribution
completeness, tabular attributions by real column name next to permutation importance, a tiny
transformer text run end to end, the CLI's --json and its one-line errors, and the report section."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train

import layerwise
from layerwise.core.errors import ConfigError
from layerwise.tools.explain import METHODS, attribute, explain_run
from layerwise.tools.explain import images as explain_images
from layerwise.tools.explain import tabular as explain_tabular

COLUMNS = ["age", "income", "city"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small CNN on the bundled 8x8 digits, trained briefly (well above chance)."""
    cfg = {"name": "digits", "data": {"source": "builtin", "name": "digits", "val_fraction": 0.1, "test_fraction": 0.2},
           "model": {"family": "cnn", "channels": [8, 16], "dropout": 0.0},
           "train": quick_train(epochs=3, lr=0.01, batch_size=64)}
    return layerwise.train(cfg, runs_dir=tmp_path_factory.mktemp("explain_runs"), quiet=True)


@pytest.fixture(scope="module")
def digits_explained(digits_run):
    return explain_run(digits_run, samples=4)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """An MLP on a CSV whose target depends on income and city (one-hot), not on age."""
    folder = tmp_path_factory.mktemp("explain_table")
    rng = np.random.default_rng(0)
    n = 240
    age = rng.normal(40, 10, n)
    income = rng.normal(50, 15, n)
    city = rng.choice(["Lyon", "Oslo", "Porto"], n)
    target = ((income - 50) / 15 + 1.5 * (city == "Oslo") - 0.5 > 0).astype(int)
    frame = pd.DataFrame({"age": age, "income": income, "city": city, "bought": target})
    frame.to_csv(folder / "shop.csv", index=False)
    cfg = {"name": "shop", "data": {"source": "csv", "path": str(folder / "shop.csv"), "target": "bought"},
           "model": {"family": "mlp", "hidden": [16], "dropout": 0.0},
           "train": quick_train(epochs=15, lr=0.01)}
    return layerwise.train(cfg, runs_dir=folder / "runs", quiet=True)


def test_every_image_method_writes_overlays_and_a_trust_table(digits_run, digits_explained):
    result = digits_explained
    assert result.methods == list(METHODS)  # the default: every method that fits an image CNN
    out = digits_run.path / "explain"
    assert (out / "overlays.png").stat().st_size > 5000
    for method in METHODS:
        attr = result.attributions[method]
        assert attr.shape == (4, 1, 8, 8)
        assert np.isfinite(attr).all() and np.abs(attr).sum() > 0, method
    saved = json.loads((out / "explain.json").read_text())
    assert saved["methods"] == list(METHODS) and saved["files"] == ["overlays.png", "trust_curves.png"]
    assert len(saved["predictions"]) == len(saved["labels"]) == 4
    assert "attributions" not in saved  # only when asked (--json)
    for method in METHODS:
        scores = saved["trust"][method]
        assert {"deletion_auc", "insertion_auc", "random_deletion_auc", "infidelity", "sensitivity",
                "randomisation_spearman"} <= set(scores)
    # occlusion removes the same patches the deletion curve removes: clearly better than random
    assert saved["trust"]["occlusion"]["deletion_auc"] < saved["trust"]["occlusion"]["random_deletion_auc"]


def test_report_gains_the_explanations_section(digits_run, digits_explained):
    text = (digits_run.path / "report.html").read_text()
    assert "Explanations" in text and "How far to trust each explanation" in text
    assert "integrated_gradients" in text and 'alt="overlays"' in text


def test_integrated_gradients_is_complete(digits_run):
    """Sum of attributions = f(x) - f(baseline) for the explained class (Sundararajan et al. 2017)."""
    x = explain_images.pixels(digits_run, digits_run.data.test.x[:6])
    forward = explain_images.pixel_forward(digits_run)
    with torch.no_grad():
        target = forward(x).argmax(1)
        gap = (forward(x) - forward(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    attr = attribute("integrated_gradients", forward, x, target, baseline=0.0, samples=200)
    assert attr.shape == x.shape
    assert torch.allclose(attr.flatten(1).sum(1), gap, atol=0.02 * float(gap.abs().max()) + 1e-3)


def test_sampling_methods_are_reproducible_and_leave_the_global_generators_alone(digits_run):
    x = explain_images.pixels(digits_run, digits_run.data.test.x[:3])
    forward = explain_images.pixel_forward(digits_run)
    mask = explain_images.patch_mask(tuple(x.shape[1:]))
    for method in ("gradient_shap", "lime"):
        torch.manual_seed(123)
        np.random.seed(123)
        first = attribute(method, forward, x, torch.zeros(3), feature_mask=mask, samples=20, seed=5)
        after = (torch.rand(1), np.random.rand())
        torch.manual_seed(123)
        np.random.seed(123)
        assert (torch.rand(1), np.random.rand()) == after  # the caller's random state is untouched
        assert torch.equal(first, attribute(method, forward, x, torch.zeros(3), feature_mask=mask, samples=20, seed=5))


def test_attribute_rejects_what_does_not_fit():
    model = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="unknown method 'shapley'.*saliency"):
        attribute("shapley", model, x, torch.zeros(3))
    with pytest.raises(ConfigError, match="occlusion window"):
        attribute("occlusion", model, x, torch.zeros(3), window=(5,))
    with pytest.raises(ConfigError, match="float inputs"):
        attribute("saliency", model, x.long(), torch.zeros(3))


def test_tabular_attributions_name_the_real_columns(table_run):
    result = explain_run(table_run, samples=3, methods=["integrated_gradients", "kernel_shap", "occlusion"])
    saved = json.loads((table_run.path / "explain" / "explain.json").read_text())
    summary = saved["summary"]
    assert summary["columns"] == COLUMNS
    assert summary["values"][0][2] in ("Lyon", "Oslo", "Porto")  # the level by name, not a one-hot slot
    for method in result.methods:
        per_column = np.array(summary["column_attributions"][method])
        assert per_column.shape == (3, 3)
    # gradient methods: the one-hot slots of 'city' are summed into the city column, nothing is lost
    encoded = result.attributions["integrated_gradients"]
    assert np.allclose(np.array(summary["column_attributions"]["integrated_gradients"]).sum(1), encoded.sum(1),
                       atol=1e-5)
    permutation = summary["permutation_importance"]
    assert len(permutation["mean"]) == 3 and permutation["score"] == "accuracy"
    age, income = permutation["mean"][0], permutation["mean"][1]
    assert income > age  # the target ignores age
    assert {"attributions.png", "importance.png"} <= set(saved["files"])
    fig = explain_tabular.plot_attributions({m: np.array(v) for m, v in summary["column_attributions"].items()},
                                            summary["columns"], summary["values"], saved["predictions"],
                                            saved["labels"])
    labels = {t.get_text().split(" = ")[0] for ax in fig.axes for t in ax.get_yticklabels()}
    assert labels == set(COLUMNS)


def test_text_transformer_run_gets_token_scores_attention_and_trust(tmp_path):
    from test_text import _play_csv

    _play_csv(tmp_path / "plays.csv", n=90)
    cfg = {"name": "plays", "data": {"source": "text", "path": str(tmp_path / "plays.csv"), "tokenizer": "char",
                                     "max_length": 16},
           "model": {"family": "transformer", "width": 16, "heads": 2, "layers": 1, "pooling": "mean"},
           "train": quick_train(epochs=1, lr=0.01, batch_size=16)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    result = run.explain(samples=2, methods=["integrated_gradients", "occlusion", "attention_rollout"])
    assert result.attributions["integrated_gradients"].shape == (2, 16)
    assert {"tokens.html", "attention_rollout.png"} <= set(result.files)
    assert set(result.trust) == {"integrated_gradients", "occlusion"}  # attention has no trust metrics
    assert "attention_rollout" in result.trust_note
    page = (run.path / "explain" / "tokens.html").read_text()
    assert "title=" in page  # each token carries its score in a tooltip


def test_bad_target_and_samples_are_config_errors(digits_run, tmp_path):
    with pytest.raises(ConfigError, match="--target 'eleven'.*choose one of 0, 1"):
        explain_run(digits_run, samples=1, target="eleven", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="samples must be at least 1"):
        explain_run(digits_run, samples=0, out_dir=tmp_path)
    result = explain_run(digits_run, samples=2, methods=["saliency"], target="3", trust=False, out_dir=tmp_path)
    assert result.targets == ["3", "3"] and not result.trust


def test_cli_json_and_one_line_errors(digits_run, tmp_path):
    run_dir = shutil.copytree(digits_run.path, tmp_path / "copy")  # the other tests read the run's own explain/
    calls = {"json": ["explain", run_dir, "--method", "saliency", "--method", "occlusion", "--samples", "2",
                      "--no-trust", "--json"],
             "unknown": ["explain", digits_run.path, "--method", "shap"],
             "misfit": ["explain", digits_run.path, "--method", "attention"],
             "target": ["explain", run_dir, "--method", "saliency", "--target", "eleven"]}
    with ThreadPoolExecutor(len(calls)) as pool:
        done = dict(zip(calls, pool.map(lambda args: cli(*args, cwd=tmp_path), calls.values())))
    code, out, err = done["json"]
    assert code == 0, err
    saved = json.loads(out)
    assert saved["methods"] == ["saliency", "occlusion"]
    assert np.array(saved["attributions"]["occlusion"]).shape == (2, 1, 8, 8)
    assert_one_line_error(*done["unknown"][::2], "unknown method 'shap'", "integrated_gradients")
    assert_one_line_error(*done["misfit"][::2], "attention", "transformer", "cnn")
    assert_one_line_error(*done["target"][::2], "--target 'eleven'", "choose one of 0, 1, 2")
