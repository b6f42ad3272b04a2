"""`layerwise generate` for generative runs: image grids and folders from vae / gan / diffusion digits
runs, a CSV with the original columns from a tabular run, seeds, and one-line errors through the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import layerwise
from layerwise.cli import main
from layerwise.core.errors import ConfigError, RunError
from layerwise.tools.generate import CELL, LABEL_WIDTH, PAD, sample_run, write_samples

DIGITS = {"source": "builtin", "name": "digits", "limit": 200}
TRAIN = {"epochs": 1, "batch_size": 50, "progress": False, "device": "cpu"}


def _train(tmp_path, name, model):
    return layerwise.train({"name": name, "data": dict(DIGITS), "model": model, "train": dict(TRAIN)},
                           quiet=True, runs_dir=tmp_path / "runs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    return {"vae": _train(tmp, "vae", {"family": "vae", "hidden": [32], "latent": 4}),
            "gan": _train(tmp, "gan", {"family": "gan", "channels": [16, 8], "latent": 8, "conditional": True}),
            "diffusion": _train(tmp, "diff", {"family": "diffusion", "channels": [8], "attention": False,
                                              "timesteps": 20, "sample_steps": 5, "time_dim": 8}),
            "autoencoder": _train(tmp, "ae", {"family": "autoencoder", "hidden": [16], "bottleneck": 4})}


def _grid_size(rows: int, cols: int, labelled: bool) -> tuple[int, int]:
    cell = 8 * math.ceil(CELL / 8)  # 8x8 digits enlarged to 32 px
    return (LABEL_WIDTH if labelled else 0) + PAD + cols * (cell + PAD), PAD + rows * (cell + PAD)


@pytest.mark.parametrize("family", ["vae", "gan", "diffusion"])
def test_grid_png_has_the_layout_size(runs, family, tmp_path):
    samples = sample_run(runs[family], 20, seed=1)
    assert samples.stored.shape == (20, 1, 8, 8) and samples.stored.dtype == np.uint8
    assert samples.x.shape == (20, 1, 8, 8)
    out = tmp_path / "grid.png"
    write_samples(samples, out)
    if family == "gan":  # conditional: one row per class (2 each), class names on the left
        assert samples.labels.tolist() == [c for c in range(10) for _ in range(2)]
        expected = _grid_size(10, 2, True)
    else:
        assert samples.labels is None
        expected = _grid_size(4, 5, False)  # ceil(sqrt(20)) = 5 columns
    assert Image.open(out).size == expected


def test_dir_mode_writes_one_native_png_per_sample(runs, tmp_path):
    files = write_samples(sample_run(runs["gan"], 6, labels=3), tmp_path / "samples")
    assert len(files) == 6 and len(list((tmp_path / "samples").glob("*.png"))) == 6
    assert all(Image.open(f).size == (8, 8) for f in files) and files[0].name == "sample_0000_3.png"


def test_same_seed_same_samples(runs):
    for family in ("vae", "gan", "diffusion"):
        a, b = sample_run(runs[family], 4, seed=7), sample_run(runs[family], 4, seed=7)
        assert np.array_equal(a.stored, b.stored)
        assert not np.array_equal(a.stored, sample_run(runs[family], 4, seed=8).stored)


def test_api_errors(runs):
    with pytest.raises(RunError, match="no prior to sample"):
        sample_run(runs["autoencoder"], 4)
    with pytest.raises(ConfigError, match="unconditional"):
        sample_run(runs["vae"], 4, labels=1)
    with pytest.raises(ConfigError, match="unknown class 'eleven'"):
        sample_run(runs["gan"], 4, labels="eleven")
    with pytest.raises(ConfigError, match="--steps: only diffusion"):
        sample_run(runs["gan"], 4, steps=3)


def _table(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    colour = rng.choice(["red", "green", "blue"], n)
    frame = pd.DataFrame({"height": rng.normal(170, 10, n).round(1), "colour": colour,
                          "weight": rng.normal(70, 5, n).round(1), "children": rng.integers(0, 4, n),
                          "label": rng.choice(["a", "b"], n)})
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return path, frame


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_tabular_csv_has_the_original_columns(tmp_path, family, run_cli):
    path, frame = _table(tmp_path)
    model = {"family": family, "hidden": [16]} | ({"latent": 4} if family == "vae" else {"conditional": True})
    run = layerwise.train({"data": {"source": "csv", "path": str(path), "target": "label"}, "model": model,
                           "train": {**TRAIN, "epochs": 2}}, quiet=True, runs_dir=tmp_path / "runs")
    code, out, err = run_cli("generate", run.path, "--n", 30, "--seed", 3, "--out", tmp_path / "s.csv")
    assert code == 0, err
    samples = pd.read_csv(tmp_path / "s.csv")
    expected = ["height", "weight", "children", "colour"] + (["label"] if family == "gan" else [])
    assert list(samples.columns) == expected and len(samples) == 30
    assert set(samples["colour"]) <= {"red", "green", "blue"}
    assert abs(samples["height"].mean() - 170) < 60  # de-standardised: back in centimetres, not z-scores
    assert samples["children"].dtype.kind == "i" and samples["children"].between(0, 3).all()  # whole numbers stay so
    assert samples["height"].dtype.kind == "f"
    if family == "gan":
        assert set(samples["label"]) <= {"a", "b"}
    again = write_samples(sample_run(run, 30, seed=3), tmp_path / "t.csv")[0]
    assert pd.read_csv(again).equals(samples)


def test_cli_grid_and_one_line_errors(runs, run_cli, tmp_path, capsys):
    code, out, err = run_cli("generate", runs["gan"].path, "--n", 10, "--class", "7", "--out", "g.png")
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size == _grid_size(1, 10, True)
    bad = {("--class", "3"): (runs["vae"], "unconditional"),
           ("--class", "x"): (runs["gan"], "unknown class"),
           ("--steps", "5"): (runs["gan"], "--steps"),
           ("--guidance", "2"): (runs["diffusion"], "--guidance"),
           (): (runs["autoencoder"], "no prior to sample")}
    for args, (run, message) in bad.items():  # in-process: the same main() the subprocess runs, faster
        capsys.readouterr()
        code = main(["generate", str(run.path), "--n", "4", *args, "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
