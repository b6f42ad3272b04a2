"""Family selection: a table without a model section fits every candidate family, keeps the one with
the lowest validation loss as the run, records the others, and resumes as the chosen family."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from helpers import write_csv

import layerwise
from layerwise.runs.selection import Candidate, choose
from layerwise.train import Callback
from layerwise.train.checkpoint import load_checkpoint


def _config(path, **sections):
    return {"name": "sel", "data": {"source": "csv", "path": str(path), "target": "target"},
            "train": {"max_steps": 12, "progress": False}, "evaluate": {"baselines": False}, **sections}


def _candidate(family: str, losses: list[float], restored: int | None = None) -> Candidate:
    history = [{"epoch": i, "val_loss": v} for i, v in enumerate(losses, 1)]
    return Candidate(family, family, history, 0.0, 10, restored)


def test_the_lowest_validation_loss_wins_and_ties_keep_the_cheaper_family():
    said: list[str] = []
    fits = {"mlp": [0.9, 0.5, 0.6], "tabm": [0.8, 0.4, 0.45]}
    winner, record = choose(("mlp", "tabm"), lambda f: _candidate(f, fits[f], restored=2), said.append)
    assert winner.family == "tabm" and record["chosen"] == "tabm"
    assert [(c["family"], c["val_loss"], c["best_epoch"]) for c in record["candidates"]] == [("mlp", 0.5, 2),
                                                                                              ("tabm", 0.4, 2)]
    assert said[-1].startswith("chosen: tabm") and "mlp 0.5" in said[-1]
    tie, _ = choose(("mlp", "tabm"), lambda f: _candidate(f, [0.3]), said.append)
    assert tie.family == "mlp"
    # no finite validation loss anywhere (diverged): the first, cheapest family stands
    nan, record = choose(("mlp", "tabm"), lambda f: _candidate(f, [math.nan]), said.append)
    assert nan.family == "mlp" and record["candidates"][0]["val_loss"] == math.inf
    # without early stopping a candidate keeps its last weights, and is judged by them, not by its best epoch
    last, record = choose(("mlp", "tabm"), lambda f: _candidate(f, fits[f]), said.append)
    assert last.family == "tabm" and [c["best_epoch"] for c in record["candidates"]] == [3, 3]
    assert record["candidates"][0]["val_loss"] == 0.6


def test_a_table_without_a_model_section_becomes_the_chosen_family(tmp_path):
    run = layerwise.train(_config(write_csv(tmp_path, n=120)), runs_dir=tmp_path / "runs", quiet=True)
    selection = run.metrics["selection"]
    assert [c["family"] for c in selection["candidates"]] == ["mlp", "tabm"]
    best = min(selection["candidates"], key=lambda c: c["val_loss"])
    assert selection["chosen"] == best["family"]
    history = [float(row["val_loss"]) for row in run.history]
    assert min(history) == pytest.approx(best["val_loss"])  # history.csv is the chosen fit's
    assert len(best["curve"]) == len(history) == best["epochs_run"]
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["model"]["family"] == best["family"] == run.config.model.family
    assert layerwise.load_run(run.path).model.config.family == best["family"]  # weights match config.yaml
    # the checkpoint is the chosen fit's, early stopping's state included (a resume continues its count)
    state = load_checkpoint(run.path / "checkpoints" / "last.pt")
    assert state["callbacks"]["EarlyStopping"]["best"] == pytest.approx(best["val_loss"])
    assert state["global_step"] == run.metrics["training"]["steps"]
    report = (run.path / "report.html").read_text()
    assert "Family selection" in report and 'alt="validation loss of each candidate family' in report
    assert run.metrics["energy"]["sessions"] == 2  # both fits are counted in the run's energy


def test_a_chosen_run_resumes_as_its_family_and_keeps_the_record(tmp_path):
    run = layerwise.train(_config(write_csv(tmp_path, n=120)), runs_dir=tmp_path / "runs", quiet=True)
    before = json.loads((run.path / "metrics.json").read_text())
    steps = before["training"]["steps"]
    resumed = layerwise.train(resume=run.path, quiet=True, train__max_steps=steps + 6)
    after = resumed.metrics
    assert after["training"]["steps"] == steps + 6  # continued, not refitted: no candidate ran again
    assert after["selection"] == before["selection"]
    assert resumed.config.model.family == before["selection"]["chosen"]


def test_naming_a_family_or_the_fast_recipe_fits_one_model(tmp_path):
    path = write_csv(tmp_path, n=120)
    named = layerwise.train(_config(path, model={"family": "tabm"}), runs_dir=tmp_path / "runs", quiet=True)
    fast = layerwise.train(_config(path, recipe="fast"), runs_dir=tmp_path / "runs", quiet=True)
    assert "selection" not in named.metrics and "selection" not in fast.metrics
    assert (named.config.model.family, fast.config.model.family) == ("tabm", "mlp")
    assert "Family selection" not in (named.path / "report.html").read_text()


class _StopInFirstCandidate(Callback):
    def on_epoch_end(self, trainer, logs):
        raise KeyboardInterrupt


def test_an_interrupted_selection_keeps_nothing_and_says_so(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(layerwise.TrainingInterrupted, match="nothing was kept"):
        layerwise.train(_config(write_csv(tmp_path, n=120)), runs_dir=runs, quiet=True,
                        callbacks=[_StopInFirstCandidate()])
    assert not runs.exists() or not any(runs.iterdir())
