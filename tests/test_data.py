"""Data sources, splitting, preprocessing fitted on the training split, augmentation and batching."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import MNIST, idx_bytes, quick_train, tiny_mlp, write_idx_folder

import layerwise
from layerwise import DataError, load_config
from layerwise.data import load_data
from layerwise.data.loader import BatchLoader
from layerwise.data.pipeline import split_indices
from layerwise.data.preprocess import ImagePreprocessor
from layerwise.data.spec import Split
from layerwise.runs.training import loaders


def bundle_of(data: dict, model: dict | None = None, **kw):
    cfg = load_config({"data": data, "model": model or {"family": "mlp"}, **kw})
    return load_data(cfg.data, cfg.task)


# -- builtin ---------------------------------------------------------------------------------


def test_builtin_digits_is_an_image_set():
    bundle = bundle_of({"name": "digits"})
    spec = bundle.spec
    assert spec.kind == "image"
    assert spec.input_shape == (1, 8, 8)
    assert spec.target == "class" and spec.num_classes == 10
    assert bundle.train.x.dtype == torch.uint8  # stored compactly, normalized per batch
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797


def test_builtin_diabetes_implies_regression(tmp_path):
    bundle = bundle_of({"name": "diabetes"})
    assert bundle.spec.kind == "tabular" and bundle.spec.input_shape == (10,)
    assert bundle.spec.target == "numeric" and bundle.spec.num_targets == 1
    run = layerwise.train({"data": {"name": "diabetes"}, "model": tiny_mlp(), "train": quick_train(epochs=1)},
                          runs_dir=tmp_path, quiet=True)
    assert run.config.task == "regression"
    assert {"mae", "mse", "rmse", "r2"} <= set(run.metrics["metrics"])


@pytest.mark.parametrize("name, features, classes", [("iris", 4, 3), ("wine", 13, 3), ("breast_cancer", 30, 2)])
def test_builtin_tables(name, features, classes):
    spec = bundle_of({"name": name}).spec
    assert spec.kind == "tabular" and spec.input_shape == (features,) and spec.num_classes == classes


def test_builtin_class_names_come_from_the_data_set():
    from sklearn.datasets import load_iris

    bundle = bundle_of({"name": "iris"})
    assert bundle.spec.class_names == ["setosa", "versicolor", "virginica"]
    assert bundle.spec.class_names == list(load_iris().target_names)
    assert bundle.preprocessor.classes == [0, 1, 2]  # the label values themselves stay integers


# -- csv and parquet -------------------------------------------------------------------------


def _train_rows(n: int, y: np.ndarray, data_cfg) -> np.ndarray:
    """The row indices of the training split, recomputed the way the pipeline draws them."""
    rest, _ = split_indices(n, y, data_cfg.test_fraction, data_cfg.split_seed)
    keep, _ = split_indices(len(rest), y[rest], data_cfg.val_fraction, data_cfg.split_seed + 1)
    return rest[keep]


def test_csv_encodes_text_imputes_and_standardizes_on_train_only(make_csv):
    path = make_csv("table.csv", n=120)
    frame = pd.read_csv(path)
    cfg = load_config({"data": {"source": "csv", "path": str(path), "target": "target", "scaling": "standard"},
                       "model": {"family": "mlp"}})
    bundle = load_data(cfg.data)
    spec, pre = bundle.spec, bundle.preprocessor.inputs

    # b's missing value gets an indicator; the text column is one-hot encoded, with a level for its
    # missing value and a slot for unseen levels
    assert spec.feature_names == ["a", "b", "b=<missing>", "color=blue", "color=green", "color=red",
                                  "color=<missing>", "color=<other>"]
    assert spec.input_shape == (8,)
    assert spec.num_classes == 2

    # no missing value survives preprocessing, in any split
    for split in (bundle.train, bundle.val, bundle.test):
        assert torch.isfinite(split.x).all()

    # the statistics are those of the training rows only
    train_rows = _train_rows(len(frame), frame["target"].to_numpy(), cfg.data)
    assert len(train_rows) == len(bundle.train)
    for col in ("a", "b"):
        values = frame[col].to_numpy()[train_rows]
        assert pre.mean_[col] == pytest.approx(np.nanmean(values))
        assert pre.fill_[col] == pytest.approx(np.nanmean(values))  # impute: mean
        assert pre.mean_[col] != pytest.approx(np.nanmean(frame[col]), abs=1e-9)  # not the whole file's
    standardized = bundle.train.x[:, :2]
    assert torch.allclose(standardized.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(standardized.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert not torch.allclose(bundle.test.x[:, :2].mean(0), torch.zeros(2), atol=1e-3)

    # the imputed row holds the training mean, i.e. 0 after standardization
    row = 3  # write_csv blanks b in row 3
    where = np.flatnonzero(train_rows == row)
    if where.size:
        assert bundle.train.x[where[0], 1] == pytest.approx(0.0, abs=1e-6)


def test_csv_median_imputation_and_no_normalization(make_csv):
    path = make_csv("table.csv")
    frame = pd.read_csv(path)
    cfg = load_config({"data": {"source": "csv", "path": str(path), "target": "target", "impute": "median",
                                "normalize": False}, "model": {"family": "mlp"}})
    bundle = load_data(cfg.data)
    pre = bundle.preprocessor.inputs
    train_rows = _train_rows(len(frame), frame["target"].to_numpy(), cfg.data)
    assert pre.fill_["b"] == pytest.approx(np.nanmedian(frame["b"].to_numpy()[train_rows]))
    # without normalization, values pass through unchanged
    assert torch.allclose(bundle.train.x[:, 0].double(), torch.from_numpy(frame["a"].to_numpy()[train_rows]),
                          atol=1e-6)


def test_csv_features_and_drop_select_columns(make_csv):
    path = make_csv("table.csv")
    spec = bundle_of({"source": "csv", "path": str(path), "target": "target", "features": ["a", "color"]}).spec
    assert spec.feature_names == ["a", "color=blue", "color=green", "color=red", "color=<missing>", "color=<other>"]
    spec = bundle_of({"source": "csv", "path": str(path), "target": "target", "drop": ["color"]}).spec
    assert spec.feature_names == ["a", "b", "b=<missing>"]
    frame = pd.read_csv(path)
    frame["grade"] = np.arange(len(frame)) % 3 + 1  # integer codes that are really categories
    frame.to_csv(path, index=False)
    spec = bundle_of({"source": "csv", "path": str(path), "target": "target", "categorical_columns": ["grade"]}).spec
    assert [n for n in spec.feature_names if n.startswith("grade")] == ["grade=1", "grade=2", "grade=3", "grade=<other>"]
    assert "grade" not in spec.feature_names


def test_csv_missing_feature_column_suggests(make_csv):
    path = make_csv("table.csv")
    with pytest.raises(DataError, match=r"data.features: column 'colour' not found .*did you mean 'color'"):
        bundle_of({"source": "csv", "path": str(path), "target": "target", "features": ["a", "colour"]})


def test_csv_embedding_encoding_trains_an_mlp(make_csv, tmp_path):
    path = make_csv("table.csv")
    data = {"source": "csv", "path": str(path), "target": "target", "categorical_encoding": "embedding"}
    bundle = bundle_of(data)
    assert bundle.spec.feature_names == ["a", "b", "b=<missing>", "color"]
    assert bundle.spec.categorical == [(3, 5)]  # column 3, three colours + <missing> + the unknown level
    codes = bundle.train.x[:, 3]
    assert set(codes.tolist()) <= {0.0, 1.0, 2.0, 3.0}

    run = layerwise.train({"data": data, "model": tiny_mlp(), "train": quick_train(epochs=2)}, runs_dir=tmp_path,
                          quiet=True)
    embeddings = [m for m in run.model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) == 1 and embeddings[0].num_embeddings == 5
    preds = run.predict(path)
    assert preds["proba"].shape == (80, 2)


def _states_table(path, rows: int = 600, seed: int = 0):
    """A table with 51 US-state-like levels, 3 colours and a row id."""
    rng = np.random.default_rng(seed)
    states = [f"state_{i:02d}" for i in range(51)]
    state = rng.integers(0, 51, rows)
    a = rng.normal(size=rows)
    frame = pd.DataFrame({"a": a, "state": [states[i] for i in state],
                          "color": rng.choice(["red", "green", "blue"], rows),
                          "id": [f"row-{i:05d}" for i in range(rows)],
                          "target": ((state % 2 == 0) ^ (a > 1.0)).astype(int)})  # the state's parity matters
    frame.to_csv(path, index=False)
    return path


def test_categorical_columns_pick_their_encoding_by_cardinality(tmp_path):
    path = _states_table(tmp_path / "states.csv")
    assert bundle_of({"source": "csv", "path": str(path), "target": "target", "drop": ["id"]}
                     ).preprocessor.inputs.encodings_ == {"state": "onehot", "color": "onehot"}  # up to 100 levels
    data = {"source": "csv", "path": str(path), "target": "target", "drop": ["id"], "onehot_max_levels": 10}
    bundle = bundle_of(data)
    pre = bundle.preprocessor.inputs
    assert pre.encoding_of("state") == "embedding" and pre.encoding_of("color") == "onehot"
    # a, state (one integer code), then color's 3 levels + <other>: the embedded slot sits in the middle
    assert bundle.spec.feature_names[:2] == ["a", "state"] and len(bundle.spec.feature_names) == 6
    assert bundle.spec.categorical == [(1, 52)]  # 51 states + the unknown level

    run = layerwise.train({"data": data, "model": tiny_mlp(), "train": quick_train(epochs=8, lr=0.01)},
                          runs_dir=tmp_path / "runs", quiet=True)
    embeddings = [m for m in run.model.modules() if isinstance(m, torch.nn.Embedding)]
    assert [e.num_embeddings for e in embeddings] == [52]
    assert run.evaluate()["accuracy"] > 0.75  # the parity of the state is learnt through its embedding
    again = layerwise.load_run(run.path)  # the per-column encodings travel with the run
    assert again.preprocessing.inputs.encoding_of("state") == "embedding"
    assert again.predict(path)["proba"].shape == (600, 2)


def test_an_identifier_column_is_refused_and_onehot_still_refuses_many_levels(tmp_path):
    path = _states_table(tmp_path / "states.csv")
    # 432 rows: the training split of 600 (the encodings are fitted on the training split only)
    with pytest.raises(DataError, match=r"column 'id' looks like an identifier \(432 distinct values in 432 rows\).*data.drop"):
        bundle_of({"source": "csv", "path": str(path), "target": "target"})
    with pytest.raises(DataError, match="'id' has 432 distinct text values, too many to one-hot encode"):
        bundle_of({"source": "csv", "path": str(path), "target": "target", "categorical_encoding": "onehot"})


def test_regression_csv_with_several_targets(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "u": x.sum(1), "v": x[:, 0] * 3 + 100})
    frame.to_csv(tmp_path / "multi.csv", index=False)
    bundle = bundle_of({"source": "csv", "path": str(tmp_path / "multi.csv"), "target": ["u", "v"]})
    assert bundle.spec.target == "numeric" and bundle.spec.num_targets == 2
    # targets are standardized on the training split
    assert torch.allclose(bundle.train.y.mean(0), torch.zeros(2), atol=1e-5)


def test_parquet_matches_csv(make_csv, tmp_path):
    pytest.importorskip("pyarrow")
    csv = make_csv("table.csv")
    parquet = tmp_path / "table.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    from_csv = bundle_of({"source": "csv", "path": str(csv), "target": "target"})
    from_parquet = bundle_of({"source": "parquet", "path": str(parquet), "target": "target"})
    assert from_parquet.spec == from_csv.spec
    assert torch.allclose(from_parquet.train.x, from_csv.train.x)
    assert torch.equal(from_parquet.test.y, from_csv.test.y)


def test_text_labels_become_classes(make_csv):
    path = make_csv("table.csv")
    frame = pd.read_csv(path)
    frame["target"] = np.where(frame["target"] == 1, "yes", "no")
    frame.to_csv(path, index=False)
    bundle = bundle_of({"source": "csv", "path": str(path), "target": "target"})
    assert bundle.spec.class_names == ["no", "yes"]
    assert set(bundle.train.y.tolist()) == {0, 1}


# -- idx -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, gz):
    folder = write_idx_folder(tmp_path / "mnist", n_train=60, n_test=20, gz=gz)
    bundle = bundle_of({"source": "idx", "path": str(folder), "val_fraction": 0.1}, {"family": "cnn"})
    assert bundle.spec.kind == "image" and bundle.spec.input_shape == (1, 8, 8)
    assert len(bundle.test) == 20  # the t10k files are the test split
    assert len(bundle.train) + len(bundle.val) == 60
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = torch.from_numpy(np.round(digits.images[60:80] * (255 / 16)).astype(np.uint8))
    assert torch.equal(bundle.test.x[:, 0], expected)
    assert torch.equal(bundle.test.y, torch.from_numpy(digits.target[60:80]))


def test_idx_bad_magic_number(tmp_path):
    folder = write_idx_folder(tmp_path / "mnist", gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an IDX file"):
        bundle_of({"source": "idx", "path": str(folder)}, {"family": "cnn"})


def test_idx_images_and_labels_must_pair(tmp_path):
    folder = write_idx_folder(tmp_path / "mnist", gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DataError, match="t10k has 20 images but 5 labels"):
        bundle_of({"source": "idx", "path": str(folder)}, {"family": "cnn"})


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="shared MNIST files are absent")
def test_real_mnist_with_limit():
    bundle = bundle_of({"source": "idx", "path": str(MNIST), "limit": 500}, {"family": "cnn"})
    assert bundle.spec.input_shape == (1, 28, 28) and bundle.spec.num_classes == 10
    assert len(bundle.train) == 500
    assert len(bundle.test) == 10_000
    assert bundle.train.x.dtype == torch.uint8 and int(bundle.train.x.max()) > 200


# -- image folders ---------------------------------------------------------------------------


def test_image_folder_grayscale_resized(make_image_folder):
    root = make_image_folder("gray", classes=(3, 5, 7), per_class=8, mode="L", size=8)
    bundle = bundle_of({"source": "image_folder", "path": str(root), "image_size": 12}, {"family": "cnn"})
    assert bundle.spec.input_shape == (1, 12, 12)
    assert bundle.spec.class_names == ["3", "5", "7"]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 24


def test_image_folder_rgb_and_forced_channels(make_image_folder):
    root = make_image_folder("rgb", classes=(0, 1), per_class=6, mode="RGB", size=8)
    spec = bundle_of({"source": "image_folder", "path": str(root), "image_size": [6, 10]}, {"family": "cnn"}).spec
    assert spec.input_shape == (3, 6, 10)
    spec = bundle_of({"source": "image_folder", "path": str(root), "image_size": 8, "channels": 1},
                     {"family": "cnn"}).spec
    assert spec.input_shape == (1, 8, 8)


def test_image_folder_class_without_images(make_image_folder):
    root = make_image_folder("imgs", classes=(0, 1), per_class=4)
    (root / "2").mkdir()
    with pytest.raises(DataError, match="class folder holds no images"):
        bundle_of({"source": "image_folder", "path": str(root)}, {"family": "cnn"})


# -- npz -------------------------------------------------------------------------------------


def test_npz_tabular_with_test_split(iris_npz):
    bundle = bundle_of({"source": "npz", "path": str(iris_npz), "val_fraction": 0.1})
    assert bundle.spec.kind == "tabular" and bundle.spec.input_shape == (4,)
    assert len(bundle.test) == 30  # x_test, not a share of x
    assert len(bundle.train) + len(bundle.val) == 120


def test_npz_images_channels_last(make_npz):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 9, 7, 3), dtype=np.uint8)
    path = make_npz("img.npz", x=x, y=np.arange(30) % 3)
    bundle = bundle_of({"source": "npz", "path": str(path), "test_fraction": 0.0, "val_fraction": 0.0},
                       {"family": "cnn"})
    assert bundle.spec.kind == "image" and bundle.spec.input_shape == (3, 9, 7)
    assert torch.equal(bundle.train.x, torch.from_numpy(x.transpose(0, 3, 1, 2)))


def test_npz_float_images_must_be_in_unit_range(make_npz):
    path = make_npz("img.npz", x=np.full((10, 4, 4), 3.0), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\]"):
        bundle_of({"source": "npz", "path": str(path)}, {"family": "cnn"})


# -- splitting -------------------------------------------------------------------------------


def _imbalanced_npz(make_npz, n0=180, n1=20):
    rng = np.random.default_rng(1)
    y = np.array([0] * n0 + [1] * n1)
    rng.shuffle(y)
    return make_npz("imb.npz", x=rng.normal(size=(len(y), 3)).astype(np.float32), y=y)


def test_stratified_split_keeps_class_proportions(make_npz):
    path = _imbalanced_npz(make_npz)
    bundle = bundle_of({"source": "npz", "path": str(path), "test_fraction": 0.25, "val_fraction": 0.2})
    for split, size in ((bundle.test, 50), (bundle.val, 30), (bundle.train, 120)):
        assert len(split) == size
        share = float((split.y == 1).float().mean())
        assert abs(share - 0.1) <= 1.0 / size + 1e-9, share


def test_split_is_seeded(make_npz):
    path = _imbalanced_npz(make_npz)
    data = {"source": "npz", "path": str(path), "test_fraction": 0.25}
    first, again = bundle_of(data), bundle_of(data)
    other = bundle_of({**data, "split_seed": 1})
    assert torch.equal(first.test.x, again.test.x) and torch.equal(first.train.x, again.train.x)
    assert not torch.equal(first.test.x, other.test.x)


def test_limit_keeps_the_first_training_samples(make_npz):
    path = _imbalanced_npz(make_npz)
    full = bundle_of({"source": "npz", "path": str(path)})
    limited = bundle_of({"source": "npz", "path": str(path), "limit": 60})
    assert len(limited.train) == 60
    assert torch.equal(limited.test.y, full.test.y)


# -- augmentation, samplers, batch order -----------------------------------------------------


def _digits_bundle(augment: dict | None):
    data = {"name": "digits", "limit": 128}
    if augment:
        data["augment"] = augment
    return bundle_of(data, {"family": "cnn"})


def test_augmentation_changes_training_batches_only():
    plain = _digits_bundle(None)
    augmented = _digits_bundle({"shift": 0.2, "rotation": 20, "scale": 0.1, "noise": 0.1})
    assert torch.equal(plain.train.x, augmented.train.x)  # stored data are untouched

    def batches(bundle, train: bool):
        loader = BatchLoader(bundle.train, 32, shuffle=train, seed=3, transform=bundle.preprocessor.inputs.batch,
                             train=train)
        loader.set_epoch(0)
        return list(loader)

    for (xa, ya), (xp, yp) in zip(batches(augmented, True), batches(plain, True)):
        assert xa.shape == xp.shape == (32, 1, 8, 8)
        assert torch.equal(ya, yp)
        assert not torch.allclose(xa, xp, atol=1e-3)
    for (xa, _), (xp, _) in zip(batches(augmented, False), batches(plain, False)):
        assert torch.equal(xa, xp)  # evaluation batches are never augmented
    # augmentation randomness is a function of (seed, epoch, batch): replaying gives the same batches
    for (x1, _), (x2, _) in zip(batches(augmented, True), batches(augmented, True)):
        assert torch.equal(x1, x2)


def test_flip_mirrors_images():
    pre = ImagePreprocessor(1, (4, 4), normalize=False, augment={"flip": True})
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1) * 10
    out = pre.batch(x, train=True, seed=0)
    base = x.float() / 255
    flipped = [torch.allclose(o, base[0].flip(-1), atol=1e-5) for o in out]
    same = [torch.allclose(o, base[0], atol=1e-5) for o in out]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54


def test_weighted_sampler_balances_classes(make_npz):
    path = _imbalanced_npz(make_npz, n0=270, n1=30)
    cfg = load_config({"data": {"source": "npz", "path": str(path), "sampler": "weighted", "test_fraction": 0.0,
                                "val_fraction": 0.0}, "model": {"family": "mlp"}, "train": {"batch_size": 50}})
    bundle = load_data(cfg.data)
    train_loader, _ = loaders(bundle, cfg, torch.device("cpu"))
    drawn = torch.cat([y for epoch in range(4) for y in (train_loader.set_epoch(epoch) or [b[1] for b in train_loader])])
    assert len(drawn) == 4 * 300
    share = float((drawn == 1).float().mean())
    assert 0.43 < share < 0.57, share  # the data hold 10% of class 1
    random_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sampler": "random"})})
    plain_loader, _ = loaders(bundle, random_cfg, torch.device("cpu"))
    plain = torch.cat([y for _, y in plain_loader])
    assert float((plain == 1).float().mean()) == pytest.approx(0.1)


def test_batch_order_is_a_function_of_seed_and_epoch():
    split = Split(torch.arange(100).float().unsqueeze(1), torch.arange(100))

    def order(seed: int, epoch: int, start: int = 0) -> list[int]:
        loader = BatchLoader(split, 16, shuffle=True, seed=seed)
        loader.set_epoch(epoch, start)
        return [int(v) for _, y in loader for v in y]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(100))  # a permutation: every sample once
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 2, start=3) == order(0, 2)[3 * 16:]  # resuming mid-epoch draws the same remaining batches
    unshuffled = BatchLoader(split, 16)
    assert [int(v) for _, y in unshuffled for v in y] == list(range(100))
    assert len(BatchLoader(split, 16)) == 7 and len(BatchLoader(split, 16, drop_last=True)) == 6
