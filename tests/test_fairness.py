"""Fairness: group metrics against hand computations, the sensitive column lined up with the run's
splits, threshold mitigation fitted on the validation split, the report section and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, cli, quick_train, tiny_mlp

import layerwise
from layerwise.core.errors import ConfigError


def biased_table(n: int, seed: int) -> pd.DataFrame:
    """Group 'a' is approved far more often at equal merit x1; ``outcome`` repeats the label as text
    and ``region`` is unrelated (both left out of the features by the config)."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    target = ((x1 + 1.5 * (group == "a") + 0.3 * rng.normal(size=n)) > 0.8).astype(int)
    return pd.DataFrame({"id": np.arange(n), "group": group, "x1": x1, "x2": x2, "age": rng.integers(20, 70, n),
                         "region": rng.choice(["north", "south", "east"], n),
                         "outcome": np.where(target == 1, "yes", "no"), "target": target})


def loans_config(path, **data) -> dict:
    return {"name": "loans", "data": {"source": "csv", "path": str(path), "target": "target",
                                      "drop": ["id", "region", "outcome"], "val_fraction": 0.25,
                                      "test_fraction": 0.25, **data},
            "model": tiny_mlp(), "train": quick_train(epochs=3, lr=0.02)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fairness")
    biased_table(800, seed=0).to_csv(folder / "loans.csv", index=False)
    biased_table(300, seed=1).to_csv(folder / "holdout.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def loans_run(folder):
    return layerwise.train(loans_config(folder / "loans.csv"), runs_dir=folder / "runs", quiet=True)


def test_group_counts_sum_to_the_split_and_numeric_columns_are_binned(loans_run):
    size = len(loans_run.data.test)
    by_group = loans_run.fairness("group")
    assert [row["group"] for row in by_group.groups] == ["a", "b"]
    assert sum(row["count"] for row in by_group.groups) == size == by_group.samples
    assert by_group.positive == "1" and by_group.demographic_parity_difference > 0.3  # the built-in bias
    by_age = loans_run.fairness("age", bins=3)
    assert len(by_age.groups) == len(by_age.bins) == 3
    assert by_age.groups[0]["group"].startswith("< ") and by_age.groups[-1]["group"].startswith(">= ")
    assert sum(row["count"] for row in by_age.groups) == size


def test_a_dropped_column_lines_up_with_the_rows_of_the_split(loans_run):
    # 'outcome' is the label as text and not a feature: within group 'yes' every true label is 1, so
    # accuracy equals the selection rate there, and 1 - selection rate in group 'no', only if the
    # column's rows are exactly the test split's rows
    result = loans_run.fairness("outcome")
    rows = {row["group"]: row for row in result.groups}
    y = loans_run.data.test.y.numpy()
    assert rows["yes"]["count"] == int((y == 1).sum()) and rows["no"]["count"] == int((y == 0).sum())
    assert rows["yes"]["accuracy"] == pytest.approx(rows["yes"]["selection_rate"])
    assert rows["no"]["accuracy"] == pytest.approx(1 - rows["no"]["selection_rate"])


def test_parity_differences_equal_a_hand_computation_from_the_predictions(loans_run, folder):
    result = loans_run.fairness("group", data=folder / "holdout.csv")
    frame = pd.read_csv(folder / "holdout.csv")
    pred = loans_run.predict(folder / "holdout.csv")["label"]  # class ids; class 1 is label 1
    truth, groups = frame["target"].to_numpy(), frame["group"].to_numpy()
    rate = {g: pred[groups == g].mean() for g in ("a", "b")}
    tpr = {g: pred[(groups == g) & (truth == 1)].mean() for g in ("a", "b")}
    fpr = {g: pred[(groups == g) & (truth == 0)].mean() for g in ("a", "b")}
    assert result.samples == len(frame)
    assert result.demographic_parity_difference == pytest.approx(abs(rate["a"] - rate["b"]))
    assert result.equalized_odds_difference == pytest.approx(max(abs(tpr["a"] - tpr["b"]), abs(fpr["a"] - fpr["b"])))
    assert {row["group"]: row["selection_rate"] for row in result.groups} == pytest.approx(rate)


def test_threshold_mitigation_is_fitted_on_validation_and_lowers_the_parity_gap(loans_run, folder):
    result = loans_run.fairness("group", mitigate="threshold")
    mitigation = result.mitigation
    assert mitigation["fit_split"] == "val" and mitigation["fit_samples"] == len(loans_run.data.val)
    assert mitigation["before"]["demographic_parity_difference"] == pytest.approx(result.demographic_parity_difference)
    assert mitigation["after"]["demographic_parity_difference"] < mitigation["before"]["demographic_parity_difference"] / 2
    assert set(mitigation["thresholds"]) == {"a", "b"}
    # without a validation split there is nothing to fit on: it refuses rather than use the test split
    no_val = layerwise.train(loans_config(folder / "loans.csv", val_fraction=0), runs_dir=folder / "runs", quiet=True)
    with pytest.raises(ConfigError, match="validation split"):
        no_val.fairness("group", mitigate="threshold")


def test_the_report_gains_a_fairness_section(loans_run, tmp_path):
    run = layerwise.load_run(shutil.copytree(loans_run.path, tmp_path / "copy"))
    shutil.rmtree(run.path / "fairness", ignore_errors=True)
    assert "<h2>Fairness" not in run.report().read_text()
    run.fairness("group", mitigate="threshold")
    page = (run.path / "report.html").read_text()
    assert "<h2>Fairness</h2>" in page and "demographic_parity_difference" in page and "Threshold optimizer" in page
    assert (run.path / "fairness" / "groups.png").stat().st_size > 1000


def test_multiclass_runs_measure_each_class_against_the_rest(tmp_path):
    cfg = {"name": "iris", "data": {"source": "builtin", "name": "iris", "test_fraction": 0.3},
           "model": tiny_mlp(), "train": quick_train(epochs=3, lr=0.05)}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    result = run.fairness("petal length (cm)", bins=2)
    assert result.positive is None and set(result.per_class) == {"setosa", "versicolor", "virginica"}
    assert result.demographic_parity_difference == max(v["demographic_parity_difference"] for v in result.per_class.values())
    for row in result.groups:  # every sample is predicted as exactly one class
        assert sum(row[f"selection_rate[{c}]"] for c in result.classes) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="binary"):
        run.fairness("petal length (cm)", mitigate="threshold")


def test_cli_json_output_parses(loans_run, tmp_path):
    code, out, err = cli("evaluate", loans_run.path, "--sensitive", "group", "--mitigate", "threshold", "--json",
                         cwd=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["metrics"]["accuracy"] > 0.7
    assert [row["group"] for row in data["fairness"]["groups"]] == ["a", "b"]
    assert data["fairness"]["mitigation"]["constraint"] == "demographic_parity"


def test_cli_unknown_column_is_a_one_line_error(loans_run, tmp_path):
    code, _, err = cli("evaluate", loans_run.path, "--sensitive", "gender", cwd=tmp_path)
    assert_one_line_error(code, err, "'gender'", "columns are:", "group", "region")


def test_cli_image_run_is_a_one_line_error(tmp_path):
    cfg = {"name": "digits", "data": {"source": "builtin", "name": "digits", "limit": 64},
           "model": {"family": "cnn", "channels": [4], "dropout": 0.0}, "train": quick_train(epochs=1)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    code, _, err = cli("evaluate", run.path, "--sensitive", "group", cwd=tmp_path)
    assert_one_line_error(code, err, "fairness needs a tabular classification run", "image")
