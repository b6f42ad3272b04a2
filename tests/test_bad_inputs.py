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
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from helpers import (assert_one_line_error, cli_in_process, config_error, quick_train, run_dirs, tiny_mlp, write_csv,
                     write_idx_folder, write_image_folder, write_npz, write_yaml)
from layerwise import DataError

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
    return ["train", _config(folder, cfg)], ["model.family", "'cnn'", "tabular", "families that do: ft_transformer, mlp"]


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


# -- sizes and numbers out of range ------------------------------------------------------------------


def _table_config(path: str, **data) -> dict:
    return {"data": {"source": "csv", "path": path, "target": "target", **data}, "model": tiny_mlp(), "train": TRAIN}


def _image_config(model: dict | None = None, **data) -> dict:
    return {"data": {"source": "image_folder", "path": "images", "image_size": 8, **data},
            "model": model or {"family": "cnn", "channels": [4]}, "train": TRAIN}


def _npz_config(path: str, model: dict | None = None) -> dict:
    return {"data": {"source": "npz", "path": path}, "model": model or {"family": "cnn", "channels": [4]}, "train": TRAIN}


def _idx_config() -> dict:
    return {"data": {"source": "idx", "path": "mnist"}, "model": {"family": "cnn", "channels": [4]}, "train": TRAIN}


def case_zero_mlp_width(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": tiny_mlp(hidden=[0]), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["model.hidden.0", "greater than 0", "received 0"]


def case_negative_cnn_channels(folder, shared):
    write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    return ["train", _config(folder, _image_config({"family": "cnn", "channels": [-4]}))], ["model.channels.0", "-4"]


def case_image_size_zero(folder, shared):
    write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    return ["train", _config(folder, _image_config(image_size=0))], ["data.image_size", "received 0"]


def case_zero_batch_size(folder, shared):
    return ["train", _config(folder, {"train": {"batch_size": 0}})], ["train.batch_size", "received 0"]


def case_negative_epochs(folder, shared):
    return ["train", _config(folder, {"train": {"epochs": -1}})], ["train.epochs", "received -1"]


def case_val_fraction_above_one(folder, shared):
    return ["train", _config(folder, {"data": {"val_fraction": 1.5}})], ["data.val_fraction", "1.5"]


def case_empty_target_list(folder, shared):
    write_csv(folder, "table.csv")
    return ["train", _config(folder, _table_config("table.csv", target=[]))], ["data.target", "received []"]


# -- configs that are not what they seem ---------------------------------------------------------------


def case_yaml_top_level_list(folder, shared):
    return ["train", _config(folder, "- data\n- model\n")], ["bad.yaml", "mapping", "list"]


def case_override_unknown_key(folder, shared):
    return ["train", "--set", "train.epoch=3"], ["train.epoch", "did you mean 'epochs'"]


def case_override_bad_yaml(folder, shared):
    cfg = {"data": {"name": "iris"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg), "--set", "model.hidden=[8,"], ["model.hidden", "'[8,'"]


# -- tables ------------------------------------------------------------------------------------------


def case_one_row_csv(folder, shared):
    (folder / "one.csv").write_text("a,b,target\n1.0,2.0,0\n")
    return ["train", _config(folder, _table_config("one.csv"))], ["one.csv", "1 sample(s)", "at least 3"]


def case_fractions_leave_no_training_rows(folder, shared):
    (folder / "small.csv").write_text("a,target\n" + "".join(f"{i},{i % 2}\n" for i in range(6)))
    cfg = _table_config("small.csv", val_fraction=0.9, test_fraction=0.9)
    return ["train", _config(folder, cfg)], ["small.csv", "6 sample(s)", "at least 45"]


def case_duplicate_column_names(folder, shared):
    (folder / "dup.csv").write_text("a,b,a,target\n" + "".join(f"{i},{i % 3},{-i},{i % 2}\n" for i in range(40)))
    return ["train", _config(folder, _table_config("dup.csv"))], ["dup.csv", "column 'a'", "2 times"]


def case_infinite_feature(folder, shared):
    write_csv(folder, "table.csv", junk=("a", 7, "inf"))
    return ["train", _config(folder, _table_config("table.csv"))], ["table.csv", "column 'a'", "infinite", "row 7"]


def case_only_target_column(folder, shared):
    (folder / "only.csv").write_text("target\n" + "".join(f"{i % 2}\n" for i in range(40)))
    return ["train", _config(folder, _table_config("only.csv"))], ["only.csv", "no feature columns"]


def case_constant_target(folder, shared):
    table = write_csv(folder, "table.csv")
    pd.read_csv(table).assign(target=1).to_csv(table, index=False)
    return ["train", _config(folder, _table_config("table.csv"))], ["table.csv", "single class (1)"]


def case_missing_labels(folder, shared):
    table = write_csv(folder, "table.csv")
    frame = pd.read_csv(table)
    frame.loc[4, "target"] = np.nan
    frame.to_csv(table, index=False)
    return ["train", _config(folder, _table_config("table.csv"))], ["table.csv", "no label", "row 4"]


def case_binary_garbage_csv(folder, shared):
    (folder / "garbage.csv").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return ["train", _config(folder, _table_config("garbage.csv"))], ["garbage.csv", "not a text table"]


def case_spreadsheet_as_csv(folder, shared):
    (folder / "table.xlsx").write_bytes(b"PK\x03\x04" + bytes(200))  # what an .xlsx (a zip) starts with
    return ["train", _config(folder, _table_config("table.xlsx"))], ["table.xlsx", "not a text table", "export it as UTF-8 CSV"]


def case_parquet_that_is_a_csv(folder, shared):
    write_csv(folder, "table.parquet")
    cfg = {"data": {"source": "parquet", "path": "table.parquet", "target": "target"}, "model": tiny_mlp(), "train": TRAIN}
    return ["train", _config(folder, cfg)], ["table.parquet", "cannot be read as a table"]


def case_data_path_is_a_folder(folder, shared):
    (folder / "table.csv").mkdir()
    return ["train", _config(folder, _table_config("table.csv"))], ["data.path", "table.csv", "is a folder"]


# -- arrays, IDX files and images --------------------------------------------------------------------


def case_npz_pixels_above_255(folder, shared):
    pixels = np.random.default_rng(0).integers(0, 300, size=(40, 8, 8))  # int64: once wrapped modulo 256
    write_npz(folder, "img.npz", x=pixels, y=np.arange(40) % 2)
    return ["train", _config(folder, _npz_config("img.npz"))], ["img.npz", "array 'x'", "to 299", "[0, 255]"]


def case_npz_negative_test_pixels(folder, shared):
    rng = np.random.default_rng(0)
    write_npz(folder, "img.npz", x=rng.integers(0, 256, size=(20, 8, 8)).astype(np.int32), y=np.arange(20) % 2,
              x_test=rng.integers(-5, 256, size=(6, 8, 8)).astype(np.int32), y_test=np.arange(6) % 2)
    return ["train", _config(folder, _npz_config("img.npz"))], ["img.npz", "array 'x_test'", "from -5", "[0, 255]"]


def case_npz_nan_pixels(folder, shared):
    pixels = np.random.default_rng(0).uniform(0, 1, size=(20, 8, 8))
    pixels[3, 2, 2] = np.nan
    write_npz(folder, "img.npz", x=pixels, y=np.arange(20) % 2)
    return ["train", _config(folder, _npz_config("img.npz"))], ["img.npz", "array 'x'", "NaN"]


def case_npz_object_array(folder, shared):
    write_npz(folder, "objects.npz", x=np.array([[1, "a"]] * 10, dtype=object), y=np.arange(10) % 2)
    return ["train", _config(folder, _npz_config("objects.npz", tiny_mlp()))], ["objects.npz", "array 'x'", "dtype=object"]


def case_npz_length_mismatch(folder, shared):
    write_npz(folder, "d.npz", x=np.zeros((40, 3)), y=np.arange(30) % 2)
    return ["train", _config(folder, _npz_config("d.npz", tiny_mlp()))], ["d.npz", "40 inputs but 30 targets"]


def case_swapped_idx_files(folder, shared):
    mnist = write_idx_folder(folder / "mnist", gz=True)
    images, labels = mnist / "train-images-idx3-ubyte.gz", mnist / "train-labels-idx1-ubyte.gz"
    image_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(image_bytes)
    return ["train", _config(folder, _idx_config())], ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                       "swapped"]


def case_idx_header_cut_short(folder, shared):
    mnist = write_idx_folder(folder / "mnist", gz=False)
    (mnist / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x08, 1, 0]))  # magic, then half a dimension
    return ["train", _config(folder, _idx_config())], ["train-labels-idx1-ubyte", "truncated"]


def case_image_folder_without_classes(folder, shared):
    root = write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    for sub in list(root.iterdir()):
        for image in list(sub.iterdir()):
            image.rename(root / f"{sub.name}_{image.name}")
        sub.rmdir()
    return ["train", _config(folder, _image_config())], ["images", "found 0 class sub-folder(s)"]


def case_empty_class_folder(folder, shared):
    root = write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    (root / "7").mkdir()
    return ["train", _config(folder, _image_config())], ["images/7", "holds no images"]


def case_zero_byte_image(folder, shared):
    root = write_image_folder(folder, "images", classes=(0, 1), per_class=5)
    (root / "0" / "empty.png").write_bytes(b"")
    return ["train", _config(folder, _image_config())], ["empty.png", "not a readable image"]


# -- text and time series ----------------------------------------------------------------------------


def case_empty_text_file(folder, shared):
    (folder / "story.txt").write_text("")
    cfg = {"data": {"source": "text", "path": "story.txt", "block_size": 8},
           "model": {"family": "mingru", "hidden": 8, "layers": 1}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["data.path", "story.txt", "is empty"]


def case_series_shorter_than_its_window(folder, shared):
    pd.DataFrame({"t": np.arange(30), "v": np.sin(np.arange(30))}).to_csv(folder / "series.csv", index=False)
    cfg = {"data": {"source": "timeseries", "path": "series.csv", "time_column": "t", "context": 24, "horizon": 6},
           "model": {"family": "gru", "hidden": 8, "layers": 1, "embedding": 8}, "train": TRAIN}
    return ["train", _config(folder, cfg)], ["series.csv", "21 steps", "context + horizon = 30"]


# -- user modules (the python family) ----------------------------------------------------------------


def _user_module(folder: Path, name: str, body: str) -> dict:
    (folder / name).write_text(body)
    return {"data": {"name": "iris"}, "model": {"family": "python", "target": f"{name}:Net"}, "train": TRAIN}


_NET = ("import sys\nimport torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(4, 3)\n{init}\n"
        "    def forward(self, x):\n"
        "        {forward}\n")


def case_user_module_exits_on_import(folder, shared):
    cfg = _user_module(folder, "script.py", "import sys\nprint('training...')\nsys.exit(0)\n")
    return ["train", _config(folder, cfg)], ["model.target", "script.py", "called sys.exit(0)"]


def case_user_module_exits_in_constructor(folder, shared):
    cfg = _user_module(folder, "quits.py", _NET.format(init="        sys.exit(3)", forward="return self.linear(x)"))
    return ["train", _config(folder, cfg)], ["model.target", "quits.py", "called sys.exit(3)"]


def case_user_module_exits_in_forward(folder, shared):
    cfg = _user_module(folder, "stops.py", _NET.format(init="", forward="sys.exit(0)"))
    return ["train", _config(folder, cfg)], ["'python'", "called sys.exit(0)", "forward"]


def case_user_module_raises_in_constructor(folder, shared):
    cfg = _user_module(folder, "fails.py", _NET.format(init="        raise RuntimeError('no GPU here')",
                                                       forward="return self.linear(x)"))
    return ["train", _config(folder, cfg)], ["model.target", "fails.py", "RuntimeError: no GPU here"]


CASES: dict[str, Callable] = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


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
        return (*cli_in_process(*args, cwd=folder), folder / "runs", fragments)

    # in this process, one after another: the CLI's own entry point, ~0.1 s a case instead of ~2 s of
    # Python and torch start-up in a subprocess
    return {name: run(name) for name in jobs}


@pytest.mark.slow  # each case is quick; the corpus together took 6 s on 2 cores (a trained run first)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly(name, corpus):
    code, out, err, runs, fragments = corpus[name]
    assert_one_line_error(code, err, *fragments)
    assert run_dirs(runs) == [], "a failed run must not leave a run directory"


def _size_fields() -> list[tuple[str, str, object]]:
    """(family, key, a zero size) for every layer count or width of every family: ints and lists of ints."""
    from layerwise.models import FAMILIES

    fields = []
    for family, cls in FAMILIES.items():
        for key, field in cls.Config.model_fields.items():
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            if isinstance(default, list) and default and all(isinstance(v, int) for v in default):
                fields.append((family, key, [0]))
            elif isinstance(default, int) and not isinstance(default, bool) and default >= 1:
                fields.append((family, key, 0))
    return fields


@pytest.mark.parametrize("family, key, zero", _size_fields())
def test_every_size_of_every_family_refuses_zero(family, key, zero):
    """No family silently builds a layer of width 0 (or -4): the schema names the key."""
    message = config_error({"model": {"family": family, key: zero}})
    assert message.startswith(f"model.{key}"), message


def test_table_in_another_encoding_is_named(tmp_path):
    from layerwise.data.tabular import read_table

    (tmp_path / "latin.csv").write_bytes("a,café,target\n1,2,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not UTF-8 text \(it holds byte 0xe9.*\); save it as UTF-8"):
        read_table(tmp_path / "latin.csv")


def test_infinite_value_in_new_data_is_refused():
    """Prediction inputs go through the same boundary as training data: inf is not a missing value."""
    from layerwise.data.preprocess import TabularPreprocessor

    pre = TabularPreprocessor(["a"], [], origin="train.csv").fit(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))
    with pytest.raises(DataError, match=r"new.csv: column 'a' has 1 infinite value\(s\) \(first: -inf at row 2\)"):
        pre.transform(pd.DataFrame({"a": [1.0, 2.0, -np.inf]}), origin="new.csv")


@pytest.mark.parametrize("pixels, found", [(np.full((2, 4, 4), 2.0), "float pixels from 2 to 2"),
                                           (np.full((2, 4, 4), 256, dtype=np.int32), "pixels from 256 to 256"),
                                           (np.full((2, 4, 4), -1, dtype=np.int64), "pixels from -1 to -1")])
def test_pixels_out_of_range_name_the_array(pixels, found):
    from layerwise.data.npz import as_kind

    with pytest.raises(DataError, match=f"a.npz: array 'x_test' holds {found}"):
        as_kind(pixels, Path("a.npz"), "x_test")


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
    assert "ModelError" in err and "families that do: ft_transformer, mlp" in err
    assert run_dirs(runs_dir) == []
