"""Tabular preprocessing (issue 13): scalings, missing indicators, encodings by cardinality, date parts,
regression target transforms, identifier refusal, the layout in the spec, and old runs.

Every option is trained into a real run directory, loaded back, and made to predict NEW rows with
unseen levels and missing values: the loaded run must encode them exactly as a preprocessor fitted
in memory on the same split does, and its predictions must be that model's outputs on them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, quick_train, tiny_mlp, write_yaml

import layerwise
from layerwise import DataError, load_config
from layerwise.data import load_data
from layerwise.data.kinds import InputError
from layerwise.data.kinds.tabular import PLE_BINS, TabularRequest
from layerwise.data.pipeline import split_rows
from layerwise.data.preprocess import Preprocessing, TabularPreprocessor, TargetTransform
from layerwise.data.preprocess.scaling import fit_scaling, scale, unscale

STATES = [f"state_{i:02d}" for i in range(51)]


def _table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Numbers (normal, skewed, a 0/1 flag, one with gaps), colours with gaps, 51 states, signup
    dates with times and gaps, and two targets: a class and a positive, skewed value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    flag = rng.integers(0, 2, n)
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    color[rng.random(n) < 0.1] = None
    signup = (pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 700 * 24, n), unit="h"))
    signup = pd.Series(signup.strftime("%Y-%m-%d %H:%M"), dtype=object)
    signup[rng.random(n) < 0.05] = None
    return pd.DataFrame({
        "x": x, "skewed": rng.lognormal(sigma=1.0, size=n), "flag": flag,
        "gappy": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
        "color": color, "state": rng.choice(STATES, n), "signup": signup,
        "label": ((x + (color == "red")) > 0.3).astype(int),
        "price": np.round(np.exp(2 + x + 0.5 * flag + 0.3 * rng.normal(size=n)), 2),
    })


def _new_rows() -> pd.DataFrame:
    """Rows the training split never saw: unseen levels, and a gap in every column."""
    new = _table(8, seed=7).drop(columns=["label", "price"])
    new.loc[0, "color"], new.loc[1, "state"], new.loc[2, "signup"] = "purple", "state_99", "2099-12-31 23:59"
    new.loc[3, ["x", "skewed", "flag", "gappy"]] = np.nan
    new.loc[4, ["color", "state", "signup"]] = None
    return new


def _train(tmp_path, data: dict, target: str = "label", **train):
    path = tmp_path / "table.csv"
    _table().drop(columns=["price" if target == "label" else "label"]).to_csv(path, index=False)
    config = {"data": {"source": "csv", "path": str(path), "target": target, **data}, "model": tiny_mlp(),
              "train": quick_train(epochs=1, **train)}
    return layerwise.train(config, runs_dir=tmp_path / "runs", quiet=True)


def _round_trip(run) -> TabularPreprocessor:
    """The saved run encodes and predicts new rows exactly as the preprocessing fitted in memory."""
    new = _new_rows()
    loaded = layerwise.load_run(run.path)
    fresh = load_data(loaded.config.data, loaded.config.task).preprocessor  # fitted again, on the same split
    encoded = fresh.inputs.transform(new)
    assert np.isfinite(encoded).all()
    np.testing.assert_array_equal(loaded.preprocessing.inputs.transform(new), encoded)
    predicted = loaded.predict(new)
    with torch.no_grad():
        outputs = loaded.model.cpu().eval()(torch.from_numpy(encoded))
    if fresh.target == "class":
        np.testing.assert_allclose(predicted["proba"], torch.softmax(outputs, 1).numpy(), atol=1e-6)
    else:
        expected = fresh.scaler.inverse(outputs).numpy()
        assert np.isfinite(predicted["value"]).all()
        np.testing.assert_allclose(predicted["value"], expected, rtol=1e-5)
    return loaded.preprocessing.inputs


# -- each option, through a run directory ------------------------------------------------------

OPTIONS = {
    "zero_config": ({}, lambda pre: (pre.scaling_["x"] == "robust" and pre.scaling_["flag"] == "standard"
                                     and pre.encodings_ == {"color": "onehot", "state": "onehot"}
                                     and pre.dates == ["signup"] and pre.indicators_ == ["gappy", "signup"])),
    "standard": ({"scaling": "standard"}, lambda pre: set(pre.scaling_.values()) == {"standard"}),
    "robust": ({"scaling": "robust"}, lambda pre: set(pre.scaling_.values()) == {"robust"}),
    "quantile": ({"scaling": "quantile"}, lambda pre: set(pre.scaling_.values()) == {"quantile"}
                 and len(pre.quantiles_["x"]) == 10),  # max(min(168 // 30, 1000), 10) quantiles
    "none": ({"scaling": "none"}, lambda pre: set(pre.scaling_.values()) == {"none"}),
    "indicators": ({"missing_indicators": True}, lambda pre: pre.indicators_ == ["x", "skewed", "flag", "gappy",
                                                                                  "signup"]),
    "no_indicators": ({"missing_indicators": False}, lambda pre: pre.indicators_ == []),
    "onehot": ({"categorical_encoding": "onehot", "onehot_max_levels": 60},
               lambda pre: set(pre.encodings_.values()) == {"onehot"}),
    "embedding": ({"categorical_encoding": "embedding"}, lambda pre: set(pre.encodings_.values()) == {"embedding"}),
    "frequency": ({"categorical_encoding": "frequency"}, lambda pre: set(pre.encodings_.values()) == {"frequency"}),
    "listed_dates": ({"date_columns": ["signup"], "impute": "median"},
                     lambda pre: pre.dates == ["signup"] and pre.date_parts_["signup"][-1] == "hour"),  # no minutes
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_input_option_round_trips_through_a_run(name, tmp_path):
    data, applied = OPTIONS[name]
    pre = _round_trip(_train(tmp_path, data))
    assert applied(pre), pre.to_dict()


@pytest.mark.parametrize("method, logged", [("standard", False), ("log", True), ("none", False), ("auto", True)])
def test_each_target_transform_round_trips_through_a_run(method, logged, tmp_path):
    run = _train(tmp_path, {"target_transform": method}, target="price")
    _round_trip(run)
    scaler = layerwise.load_run(run.path).preprocessing.scaler
    assert scaler.log == [logged]  # auto: the price is skewed (skewness > 2) and never negative
    if method == "none":
        assert (scaler.mean, scaler.std) == ([0.0], [1.0])
    else:  # standardised: in log units when logged
        price = _table()["price"].to_numpy()
        assert scaler.mean[0] < (np.log1p(price).max() if logged else price.max())


def test_log_target_is_inverted_on_known_numbers():
    y = np.array([0.0, 1.0, 9.0, 99.0, 999.0])
    transform = TargetTransform.fit(y, "log")
    logs = np.log1p(y)
    assert transform.mean == pytest.approx([logs.mean()]) and transform.std == pytest.approx([logs.std()])
    z = transform.transform(y)
    np.testing.assert_allclose(z[:, 0], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    np.testing.assert_allclose(transform.inverse(torch.from_numpy(z).double()).numpy()[:, 0], y, rtol=1e-6, atol=1e-6)
    # an output far outside the training range stays finite, and never below 0 (the transform's domain)
    extreme = transform.inverse(torch.tensor([[1e6], [-1e6]])).numpy()
    assert np.isfinite(extreme).all() and extreme[1, 0] == 0.0
    with pytest.raises(DataError, match=r"data.target_transform: log needs targets ≥ 0, and column 'price' has 1 "
                                        r"negative value\(s\) \(smallest -2\)"):
        TargetTransform.fit(np.array([1.0, -2.0, 3.0]), "log", "t.csv", ["price"])
    # runs saved before the transform existed hold mean and std only: standardised, as before
    old = Preprocessing.from_dict({"inputs": {"kind": "image", "channels": 1, "size": [2, 2], "normalize": True,
                                              "mean": [0.0], "std": [1.0]},
                                   "target": "numeric", "classes": None, "scaler": {"mean": [10.0], "std": [2.0]}})
    assert old.scaler.inverse(torch.tensor([[1.0]])).item() == 12.0


def test_log_target_predictions_and_metrics_are_in_the_target_units(tmp_path):
    """With the last layer zeroed the model outputs 0, i.e. the training mean of log1p(price): every
    prediction must be expm1 of that mean, and the test MAE the mean distance of the prices to it."""
    run = layerwise.load_run(_train(tmp_path, {"target_transform": "log"}, target="price").path)
    price = _table()["price"].to_numpy()
    train_idx, _, test_idx = split_rows(price, "numeric", run.config.data)
    expected = np.expm1(np.log1p(price[train_idx]).mean())
    last = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    values = run.predict(_new_rows())["value"]
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert run.evaluate()["mae"] == pytest.approx(np.abs(price[test_idx] - expected).mean(), rel=1e-4)


# -- what real tables need, with no flag -----------------------------------------------------


def test_a_51_level_column_and_a_95_percent_missing_column_train_without_a_flag(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    state = rng.integers(0, 51, n)
    gaps = rng.random(n) < 0.95
    frame = pd.DataFrame({"a": rng.normal(size=n), "state": [STATES[i] for i in state],
                          "mostly_missing": np.where(gaps, np.nan, rng.normal(size=n)),
                          "target": (state % 2 == 0).astype(int)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    run = layerwise.train({"data": {"source": "csv", "path": str(tmp_path / "t.csv"), "target": "target"},
                           "model": tiny_mlp(), "train": quick_train(epochs=1)}, runs_dir=tmp_path / "runs", quiet=True)
    pre = run.preprocessing.inputs
    assert pre.encoding_of("state") == "onehot" and "mostly_missing=<missing>" in pre.feature_names
    assert np.isfinite(run.data.train.x.numpy()).all()
    frame.loc[0, "state"] = "Puerto Rico"  # an unseen level
    assert np.isfinite(run.predict(frame.drop(columns="target"))["proba"]).all()


def test_categorical_levels_missing_and_unseen_per_encoding():
    train = pd.DataFrame({"c": ["a", "b", None, "a"], "d": ["a", "b", "b", "a"]})
    new = pd.DataFrame({"c": [None, "zzz", "b"], "d": [None, "zzz", "b"]})
    onehot = TabularPreprocessor([], ["c", "d"]).fit(train)
    assert onehot.feature_names == ["c=a", "c=b", "c=<missing>", "c=<other>", "d=a", "d=b", "d=<other>"]
    # c had a gap in training: missing is its own level; d had none: missing joins the unseen in <other>
    np.testing.assert_array_equal(onehot.transform(new), [[0, 0, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0, 1],
                                                          [0, 1, 0, 0, 0, 1, 0]])
    embedded = TabularPreprocessor([], ["c", "d"], "embedding").fit(train)
    assert embedded.categorical_slots == [(0, 4), (1, 3)]
    np.testing.assert_array_equal(embedded.transform(new), [[2, 2], [3, 2], [1, 1]])
    frequency = TabularPreprocessor([], ["c", "d"], "frequency").fit(train)
    code = np.log1p([2, 1, 1]) / np.log1p(4)  # c: a twice, b once, <missing> once, in 4 rows
    np.testing.assert_allclose(frequency.transform(new)[:, 0], [code[2], 0.0, code[1]], rtol=1e-6)
    assert frequency.feature_names == ["c:frequency", "d:frequency"]


def test_auto_encoding_by_cardinality():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"few": rng.choice(list("abc"), 3000), "states": rng.choice(STATES, 3000),
                          "many": [f"m{i}" for i in rng.integers(0, 1500, 3000)]})
    pre = TabularPreprocessor([], ["few", "states", "many"]).fit(frame)
    assert pre.encodings_ == {"few": "onehot", "states": "onehot", "many": "frequency"}  # > 1000 levels
    narrow = TabularPreprocessor([], ["states"], onehot_max_levels=10)
    assert narrow.fit(frame).encodings_ == {"states": "embedding"}  # 51 levels, ~59 rows each
    assert narrow.fit(frame.head(200)).encodings_ == {"states": "frequency"}  # 4 rows each: too few to embed


# -- identifiers -------------------------------------------------------------------------------


def _bundle(tmp_path, frame: pd.DataFrame, **data):
    frame.to_csv(tmp_path / "ids.csv", index=False)
    cfg = load_config({"data": {"source": "csv", "path": str(tmp_path / "ids.csv"), "target": "target", **data},
                       "model": {"family": "mlp"}})
    return load_data(cfg.data)


@pytest.mark.parametrize("column, values, why", [
    ("row", lambda n, rng: rng.permutation(n) + 1, "the whole numbers 1 to 200, each once"),
    ("Unnamed: 0", lambda n, rng: np.arange(n), "the whole numbers 0 to 199, each once"),
    ("customer_id", lambda n, rng: rng.choice(10**6, n, replace=False), "named like an id"),
    ("PassengerId", lambda n, rng: rng.choice(10**6, n, replace=False), "named like an id")])
def test_numeric_identifiers_are_refused_naming_the_column(tmp_path, column, values, why):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), column: values(200, rng), "target": rng.integers(0, 2, 200)})
    with pytest.raises(DataError, match=f"column '{column}' looks like a row identifier \\({why}.*data.drop"):
        _bundle(tmp_path, frame)
    assert _bundle(tmp_path, frame, features=["a", column]).spec.feature_names == ["a", column]  # asked for


def test_unique_measurements_are_not_identifiers(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"weight": rng.normal(70, 10, 200),  # continuous, unique per row
                          "price": rng.choice(np.arange(10_000, 90_000), 200, replace=False),  # whole, unique, sparse
                          "target": rng.integers(0, 2, 200)})
    assert _bundle(tmp_path, frame).spec.feature_names == ["weight", "price"]


def test_identifier_columns_are_refused_by_the_cli_in_one_line(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "ticket": [f"T-{i:04d}" for i in range(60)],
                          "row": np.arange(60), "target": rng.integers(0, 2, 60)})
    frame.to_csv(tmp_path / "ids.csv", index=False)
    data = {"source": "csv", "path": str(tmp_path / "ids.csv"), "target": "target"}
    config = write_yaml(tmp_path / "cfg.yaml", {"data": data, "model": tiny_mlp(), "train": quick_train(epochs=1)})
    code, _, err = run_cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert_one_line_error(code, err, "column 'row' looks like a row identifier", "data.drop")
    with pytest.raises(DataError, match=r"column 'ticket' looks like an identifier \(43 distinct values in 43 rows\)"):
        _bundle(tmp_path, frame, drop=["row"])


# -- scalings and dates, on known numbers -----------------------------------------------------


def test_robust_scaling_is_median_iqr_and_smooth_clipping():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1000.0])
    center, spread, _ = fit_scaling(values, "robust")
    assert (center, spread) == (3.5, np.quantile(values, 0.75) - np.quantile(values, 0.25))
    x = (values - center) / spread
    np.testing.assert_allclose(scale(values, "robust", center, spread, None), x / np.sqrt(1 + (x / 3) ** 2))
    assert scale(np.array([1e300, -1e300]), "robust", center, spread, None).tolist() == [3.0, -3.0]
    np.testing.assert_allclose(unscale(scale(values, "robust", center, spread, None), "robust", center, spread,
                                       None), values, rtol=1e-6)
    # an IQR of 0 (a mostly constant column) falls back to half the range
    assert fit_scaling(np.array([0.0] * 9 + [4.0]), "robust")[1] == 2.0


def test_quantile_scaling_is_normal_and_inverts_within_the_training_range():
    values = np.random.default_rng(0).lognormal(size=3000)
    center, spread, quantiles = fit_scaling(values, "quantile")
    assert len(quantiles) == 100  # min(3000 // 30, 1000)
    scaled = scale(values, "quantile", center, spread, quantiles)
    assert abs(scaled.mean()) < 0.05 and abs(scaled.std() - 1) < 0.05 and abs(np.median(scaled)) < 0.05
    middle = np.quantile(values, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(unscale(scale(middle, "quantile", 0, 1, quantiles), "quantile", 0, 1, quantiles),
                               middle, rtol=0.02)
    assert scale(np.array([1e9]), "quantile", 0, 1, quantiles)[0] == pytest.approx(5.199, abs=1e-3)  # clipped


def test_date_parts_and_their_layout():
    frame = pd.DataFrame({"when": ["2021-03-04 10:30", "2022-12-31 23:05", None, "2020-02-29 00:00"]})
    pre = TabularPreprocessor([], [], dates=["when"]).fit(frame)
    assert pre.feature_names == ["when:year", "when:month", "when:day", "when:dayofweek", "when:dayofyear",
                                 "when:hour", "when:minute", "when=<missing>"]
    encoded = pre.transform(frame)
    parts = {p: pre.inverse_numeric(f"when:{p}", encoded[:, i].astype(np.float64))
             for i, p in enumerate(pre.date_parts_["when"])}
    first = {p: round(float(v[0]), 3) for p, v in parts.items()}
    assert first == {"year": 2021, "month": 3, "day": 4, "dayofweek": 3, "dayofyear": 63, "hour": 10, "minute": 30}
    assert encoded[:, -1].tolist() == [0, 0, 1, 0]  # the missing date's indicator
    assert pre.decode(encoded)["when"][:2] == ["2021-03-04 10:30", "2022-12-31 23:05"]
    with pytest.raises(DataError, match=r"data.date_columns: column 'color' is not dates: only 0% of its values"):
        _bundle_of_frame(pd.DataFrame({"color": ["red", "blue"] * 10, "target": [0, 1] * 10}),
                         date_columns=["color"])


def _bundle_of_frame(frame: pd.DataFrame, **data):
    from layerwise.data.kinds import input_kind

    cfg = load_config({"data": {"source": "csv", "path": "unused.csv", "target": "target", **data},
                       "model": {"family": "mlp"}})
    x = frame.drop(columns="target")
    return input_kind("tabular").fit(x, np.arange(len(x)), cfg.data, "t.csv")


def test_spec_layout_and_bins_for_the_model_families(tmp_path):
    frame = _table().drop(columns="price")
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = load_config({"data": {"source": "csv", "path": str(tmp_path / "t.csv"), "target": "label",
                                "categorical_encoding": "embedding"}, "model": {"family": "mlp"}})
    bundle = load_data(cfg.data)
    spec, names = bundle.spec, bundle.spec.feature_names
    onehot = [p for start, width in spec.onehot for p in range(start, start + width)]
    embedded = [p for p, _ in spec.categorical]
    assert sorted(spec.numeric + onehot + embedded) == list(range(len(names)))  # each position once
    assert [names[p] for p in embedded] == ["color", "state"] and len(spec.bins) == len(spec.numeric)
    for position, edges in zip(spec.numeric, spec.bins):
        values = bundle.train.x[:, position].numpy()
        assert 2 <= len(edges) <= PLE_BINS + 1 and np.all(np.diff(edges) > 0), names[position]
        top = values.max() if values.max() > values.min() else values.min() + 1.0  # a constant: [v, v + 1]
        assert edges[0] == pytest.approx(values.min()) and edges[-1] == pytest.approx(top), names[position]
    assert spec.bins[names.index("flag")] == pytest.approx(sorted(set(bundle.train.x[:, names.index("flag")].tolist())))
    assert spec.bins[names.index("gappy=<missing>")] == [0.0, 1.0]
    assert len(spec.bins[names.index("x")]) == PLE_BINS + 1


# -- runs saved before, and serving ------------------------------------------------------------


def test_a_preprocessor_saved_before_these_options_encodes_as_before():
    old = {"kind": "tabular", "numeric": ["a"], "categorical": ["c"], "encoding": "auto", "impute": "mean",
           "normalize": True, "fill": {"a": 1.0}, "mean": {"a": 1.0}, "std": {"a": 2.0},
           "levels": {"c": ["x", "y"]}, "encodings": {"c": "onehot"}, "integer": {}}
    pre = TabularPreprocessor.from_dict(old)
    frame = pd.DataFrame({"a": [3.0, np.nan], "c": [None, "y"]})
    np.testing.assert_array_equal(pre.transform(frame), [[1.0, 0, 0, 1], [0.0, 0, 1, 0]])  # missing -> <other>
    assert pre.feature_names == ["a", "c=x", "c=y", "c=<other>"]
    assert pre.inverse_numeric("a", np.array([1.0]))[0] == 3.0


def test_serving_schema_takes_dates_as_strings_and_checks_overflow_through_the_scaling():
    frame = pd.DataFrame({"tiny": [0.0, 1e-11, 2e-11, 3e-11], "when": ["2021-01-02", "2021-05-06", None, "2022-01-01"],
                          "c": ["a", "b", "a", "b"]})
    standard = TabularRequest(TabularPreprocessor(["tiny"], ["c"], dates=["when"], scaling="standard").fit(frame))
    described = {c["name"]: c for c in standard.describe()["columns"]}
    assert described["when"]["dtype"] == "date" and isinstance(described["when"]["example"], str)
    example = standard.example()[0]
    standard.check_row(0, example)
    assert standard.pre.transform(standard.to_source([example])).shape == (1, len(standard.pre.feature_names))
    with pytest.raises(InputError, match=r"inputs\[0\].when: 'soon' is not a date like '20"):
        standard.check_row(0, {**example, "when": "soon"})
    with pytest.raises(InputError, match=r"inputs\[0\].tiny: 3e\+38 is too large for this column .* overflows float32"):
        standard.check_row(0, {**example, "tiny": 3e38})
    robust = TabularRequest(TabularPreprocessor(["tiny"], ["c"], dates=["when"], scaling="robust").fit(frame))
    robust.check_row(0, {**example, "tiny": 3e38})  # bounded: smoothly clipped into (-3, 3)
