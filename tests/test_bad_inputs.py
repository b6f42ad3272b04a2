"""A corpus of bad configs and bad data files, each run through the real CLI in a subprocess.

Every user mistake must end the same way: exit code 2, exactly one line on stderr that starts with
``error:`` and names the culprit (key, column or file), no traceback, and no half-written run
directory left behind.

Each case builds its files in a folder of its own and returns the CLI arguments and the fragments
its error must name. The selected cases' subprocesses run a few at a time (each mostly waits on
``import torch``), then one test per case checks its result.
"""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from helpers import (assert_one_line_error, cli, quick_train, run_dirs, tiny_mlp, write_csv, write_idx_folder,
                     write_image_folder, write_npz, write_yaml)

TRAIN = quick_train(epochs=1)


# -- the cases: (folder, shared) -> (CLI arguments, fragments the error names) --------------------
# ``folder`` is the case's own working directory; ``shared["tabular_run"]`` a trained tabular run.


def _config(folder: Path, data: dict | str) -> Path:
    return write_yaml(folder / "bad.yaml", data)


def case_unknown_top_level_key(folder, shared):
    return ["train", _config(folder, {"trian": {"epochs": 1}})], ["trian", "did you mean 'train'"]


def case_unknown_nested_key(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": {"family": "mlp", "hiddn": [8]}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["model.hiddn", "did you mean 'hidden'"]


def case_wrong_type(folder, shared):
    return ["train", _config(folder, {"train": {"epochs": "three"}})], ["train.epochs", "'three'"]


def case_unknown_family(folder, shared):
    return ["train", _config(folder, {"model": {"family": "resnte"}})], ["model.family", "did you mean 'resnet'"]


def case_unknown_optimizer(folder, shared):
    return ["train", _config(folder, {"train": {"optimizer": "rmsprob"}})], ["train.optimizer", "'rmsprop'"]


def case_family_is_a_list(folder, shared):
    return ["train", _config(folder, {"model": {"family": ["mlp"]}})], ["model.family", "expected a name", "['mlp']"]


def case_seed_beyond_32_bits(folder, shared):
    return ["train", _config(folder, {"train": {"seed": 2**70}})], ["train.seed", "4294967295"]


def case_negative_split_seed(folder, shared):
    return ["train", _config(folder, {"data": {"split_seed": -1}})], ["data.split_seed", "greater than or equal to 0"]


def case_infinite_learning_rate(folder, shared):
    (folder / "bad.yaml").write_text("train:\n  lr: .inf\n")
    return ["train", folder / "bad.yaml"], ["train.lr", "finite"]


def case_invalid_yaml(folder, shared):
    return ["train", _config(folder, "train: {epochs: 1\nmodel: [\n")], ["bad.yaml", "line 2", "YAML"]


def case_config_not_found(folder, shared):
    return ["train", folder / "missing.yaml"], ["config file not found", "missing.yaml"]


def case_bad_override(folder, shared):
    return ["train", "--set", "train.epochs"], ["--set", "train.epochs", "KEY=VALUE"]


def case_csv_not_found(folder, shared):
    cfg = {"data": {"source": "csv", "path": "nope.csv", "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["data.path", "nope.csv"]


def case_missing_target_column(folder, shared):
    write_csv(folder, "table.csv")
    cfg = {"data": {"source": "csv", "path": "table.csv", "target": "targte"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["data.target", "'targte'", "table.csv", "did you mean 'target'"]


def case_junk_in_numeric_column(folder, shared):
    write_csv(folder, "table.csv", junk=("a", 7, "abc"))
    cfg = {"data": {"source": "csv", "path": "table.csv", "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["table.csv", "column 'a'", "'abc'", "row 7"]


def case_empty_csv(folder, shared):
    (folder / "empty.csv").write_text("")
    cfg = {"data": {"source": "csv", "path": "empty.csv", "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["empty.csv"]


def case_header_only_csv(folder, shared):
    (folder / "header.csv").write_text("a,b,target\n")
    cfg = {"data": {"source": "csv", "path": "header.csv", "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["header.csv", "no rows"]


def case_unreadable_image(folder, shared):
    root = write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG but not really an image")
    cfg = {"data": {"source": "image_folder", "path": "images", "image_size": 8},
           "model": {"family": "cnn", "channels": [4]}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["broken.png", "not a readable image"]


def case_labels_out_of_range(folder, shared):
    rng = np.random.default_rng(0)
    write_npz(folder, "labels.npz", x=rng.normal(size=(40, 3)), y=np.arange(40) % 2,
             x_test=rng.normal(size=(6, 3)), y_test=np.array([0, 1, 2, 0, 1, 0]))
    cfg = {"data": {"source": "npz", "path": "labels.npz"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["labels.npz", "label(s) 2", "out of range"]


def case_model_input_mismatch(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": {"family": "cnn"}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["model.family", "'cnn'", "tabular", "families that do: mlp"]


def case_python_target_file_missing(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": {"family": "python", "target": "no_such_net.py:Net"}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["model.target", "no_such_net.py"]


def case_user_module_wrong_output_shape(folder, shared):
    (folder / "wrong.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(4, 7)\n\n"
        "    def forward(self, x):\n"
        "        return self.linear(x)\n"
    )
    cfg = {"data": {"name": "iris"}, "model": {"family": "python", "target": "wrong.py:Net"}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["python", "(2, 7)", "(batch, 3)"]


def case_truncated_idx(folder, shared):
    mnist = write_idx_folder(folder / "mnist", gz=True)
    images = mnist / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-100]))  # a complete gzip of an incomplete IDX file
    cfg = {"data": {"source": "idx", "path": "mnist"}, "model": {"family": "cnn", "channels": [4]}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["train-images-idx3-ubyte.gz", "truncated"]


def case_truncated_gzip_download(folder, shared):
    mnist = write_idx_folder(folder / "mnist", gz=True)
    labels = mnist / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:15])  # the download stopped half way
    cfg = {"data": {"source": "idx", "path": "mnist"}, "model": {"family": "cnn", "channels": [4]}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["t10k-labels-idx1-ubyte.gz", "cannot read IDX"]


def case_resume_not_a_run(folder, shared):
    (folder / "somefolder").mkdir()
    return ["train", "--resume", "somefolder"], ["--resume", "somefolder", "not a run directory"]


def case_early_stopping_monitor_not_logged(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": tiny_mlp(), "train": {**TRAIN, "early_stopping": {"monitor": "val_f1"}}}
    return ["train", _config(folder, cfg)], ["train.early_stopping.monitor", "'val_f1'"]


def case_plateau_monitor_not_logged(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": tiny_mlp(),
           "train": {**TRAIN, "scheduler": {"name": "plateau", "monitor": "val_acc"}}}
    return ["train", _config(folder, cfg)], ["train.scheduler.monitor", "'val_acc'"]


def case_evaluate_not_a_run(folder, shared):
    (folder / "somefolder").mkdir()
    return ["evaluate", "somefolder"], ["somefolder", "not a run directory"]


def case_predict_missing_run(folder, shared):
    return ["predict", "runs/nothing-here", "x.csv"], ["run directory not found", "nothing-here"]


def case_evaluate_data_without_labels(folder, shared):
    table = write_csv(folder, "unlabelled.csv")
    pd.read_csv(table).drop(columns=["target"]).to_csv(table, index=False)
    return ["evaluate", shared["tabular_run"], "--data", table], ["unlabelled.csv", "'target'", "evaluation needs labels"]


def case_predict_missing_feature_column(folder, shared):
    table = write_csv(folder, "fewer.csv")
    pd.read_csv(table).drop(columns=["b"]).to_csv(table, index=False)
    return ["predict", shared["tabular_run"], table, "--out", "p.csv"], ["fewer.csv", "column 'b'", "missing"]


CASES: dict[str, Callable] = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def test_corpus_is_large_enough():
    assert len(CASES) >= 15


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory) -> dict[str, tuple]:
    """Run every selected case's CLI command; name → (code, stdout, stderr, runs dir, fragments)."""
    import layerwise

    selected = sorted({item.callspec.params["name"] for item in request.session.items
                       if getattr(item, "originalname", "") == "test_bad_input_fails_cleanly"})
    base = tmp_path_factory.mktemp("corpus")
    trained = write_csv(base, "train.csv")
    cfg = {"data": {"source": "csv", "path": str(trained), "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    shared = {"tabular_run": layerwise.train(cfg, runs_dir=base / "trained", quiet=True).path}

    jobs = {}
    for name in selected:
        folder = base / name
        folder.mkdir()
        args, fragments = CASES[name](folder, shared)
        if args[0] == "train":
            args = [*args, "--runs-dir", folder / "runs"]
        jobs[name] = (folder, args, fragments)

    def run(name):
        folder, args, fragments = jobs[name]
        return (*cli(*args, cwd=folder), folder / "runs", fragments)

    with ThreadPoolExecutor(max_workers=max(2, min(4, (os.cpu_count() or 2) + 1))) as pool:
        return dict(zip(jobs, pool.map(run, jobs)))


@pytest.mark.slow  # each case is quick, but the corpus together takes a minute on 2 cores
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly(name, corpus):
    code, out, err, runs, fragments = corpus[name]
    assert_one_line_error(code, err, *fragments)
    assert run_dirs(runs) == [], "a failed run must not leave a run directory"


def test_mixed_image_formats_load(tmp_path, run_cli, runs_dir, make_image_folder):
    """RGB, RGBA and grayscale PNG and JPEG in one folder: all decoded to one shape (RGB, from the
    first image), and training succeeds."""
    from PIL import Image

    root = make_image_folder("mixed", classes=(0, 1), per_class=6, mode="L", size=8)
    for folder in root.iterdir():
        files = sorted(folder.glob("*.png"))
        Image.open(files[0]).convert("RGB").save(files[0])  # RGB PNG
        Image.open(files[1]).convert("RGB").save(files[1].with_suffix(".jpg"), quality=95)  # JPEG
        files[1].unlink()
        Image.open(files[2]).convert("RGBA").save(files[2])  # PNG with alpha
    cfg = {"data": {"source": "image_folder", "path": "mixed", "image_size": [10, 12], "val_fraction": 0.2},
           "model": {"family": "cnn", "channels": [4]}, "train": TRAIN}
    code, out, err = run_cli("train", write_yaml(tmp_path / "cfg.yaml", cfg), "--runs-dir", runs_dir)
    assert code == 0, err
    assert "Traceback" not in err
    (run,) = run_dirs(runs_dir)
    spec = json.loads((run / "data.json").read_text())["spec"]
    assert spec["input_shape"] == [3, 10, 12]
    assert (run / "model.safetensors").is_file()


def test_debug_shows_the_traceback(tmp_path, run_cli, runs_dir):
    cfg = {"data": {"name": "iris"}, "model": {"family": "cnn"}, "train": TRAIN}
    code, out, err = run_cli("train", write_yaml(tmp_path / "cfg.yaml", cfg), "--runs-dir", runs_dir, "--debug")
    assert code != 0
    assert "Traceback" in err
    assert "ModelError" in err and "families that do: mlp" in err
    assert run_dirs(runs_dir) == []
