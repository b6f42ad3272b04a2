"""Damaged or mismatched run files: every command that reads one ends with one line naming the file
and what to do, never a traceback.

One tabular run is trained per module, with a second run of another architecture (its files are
the "foreign" ones: another run's config, weights or checkpoint) and two compressed runs of the
first (dynamic int8: compression.json + int8 model.safetensors; static int8: int8.safetensors).
Each case copies a run directory, damages one file in one way and runs one command on it.

The whole matrix (file x damage x command) goes through the CLI's entry point, ``main(args)``, in
this process: a subprocess per case would cost ``import torch`` a hundred times. A sample that
covers every file and every command also runs as real subprocesses, a few at a time, so the
one-line promise holds for what a user sees (warnings and all). history.csv and metrics.json, which
only the report and some tools read, are checked through the Python API and a resume.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_one_line_error, cli, quick_train, tiny_mlp, write_csv

import layerwise
from layerwise.core.errors import RunError

# -- damages: (path, foreign) -> None; ``foreign`` is the same file of another run --------------


def missing(path: Path, foreign: Path) -> None:
    path.unlink()


def empty(path: Path, foreign: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path, foreign: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # a copy or a download that stopped early


def truncated_at_a_line(path: Path, foreign: Path) -> None:
    """Cut at a line end: the YAML still parses, the keys after the cut would take their defaults."""
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) * 3 // 4) + 1])


def random_bytes(path: Path, foreign: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(max(256, path.stat().st_size)))


def utf16(path: Path, foreign: Path) -> None:
    path.write_bytes(path.read_text().encode("utf-16"))  # saved again by an editor that is not UTF-8


def another_runs(path: Path, foreign: Path) -> None:
    shutil.copy2(foreign, path)


def nan_weights(path: Path, foreign: Path) -> None:
    """The first floating-point tensor of the weights (safetensors) or the checkpoint's model, NaN."""
    if path.suffix == ".pt":
        state = torch.load(path, weights_only=True)
        key = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][key] = torch.full_like(state["model"][key], float("nan"))
        torch.save(state, path)
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(path), metadata=meta)


def yaml_list(path: Path, foreign: Path) -> None:
    path.write_text("- data\n- model\n")


def json_list(path: Path, foreign: Path) -> None:
    path.write_text("[1, 2, 3]\n")


def json_without_keys(path: Path, foreign: Path) -> None:
    path.write_text("{}\n")


def json_wrong_types(path: Path, foreign: Path) -> None:
    """Every top-level key present, every value of the wrong type."""
    path.write_text(json.dumps({k: "oops" for k in json.loads(path.read_text())}))


def not_a_checkpoint(path: Path, foreign: Path) -> None:
    torch.save({"epoch": 1, "weights": [1.0, 2.0]}, path)  # loads with weights_only, holds no training state


def history_of_something_else(path: Path, foreign: Path) -> None:
    path.write_text("name,value\nfoo,1\nbar,2\n")  # a CSV, but not a training history


# -- commands: (run directory, shared) -> CLI arguments --------------------------------------


def evaluate(run_dir: Path, shared: dict) -> list:
    return ["evaluate", run_dir]


def predict(run_dir: Path, shared: dict) -> list:
    return ["predict", run_dir, shared["inputs"], "--out", run_dir.parent / "predictions.csv"]


def resume(run_dir: Path, shared: dict) -> list:
    return ["train", "--resume", run_dir, "--quiet"]  # quiet: the error is the only line on stderr


LOADS = (evaluate, predict)
EVERY = (evaluate, predict, resume)
TEXT = (missing, empty, truncated, random_bytes, utf16)
WEIGHTS = (empty, truncated, random_bytes, another_runs, nan_weights)

# (run, file, damages, commands that read the file, what the message must say besides the file name)
# run: "plain" (a trained run), "dynamic" / "static" (its int8 compressions); the foreign file is
# the one of a run of another architecture (for compressed runs: the plain run's float weights).
MATRIX: list[tuple[str, str, tuple[Callable, ...], tuple[Callable, ...], str]] = [
    ("plain", "config.yaml", (*TEXT, truncated_at_a_line, yaml_list, another_runs), EVERY, "train the run again"),
    ("plain", "data.json", (*TEXT, json_list, json_without_keys, json_wrong_types), EVERY, "train the run again"),
    ("plain", "model.safetensors", (missing, *WEIGHTS), LOADS, "--resume"),
    ("plain", "checkpoints/last.pt", (missing, *WEIGHTS, not_a_checkpoint), (resume,), "again"),
    ("dynamic", "compression.json", (*TEXT, json_list, json_without_keys), LOADS, "compress the original run again"),
    ("dynamic", "model.safetensors", (missing, *WEIGHTS), LOADS, "compress the original run again"),
    ("static", "int8.safetensors", (missing, *WEIGHTS), (evaluate,), "compress the original run again"),
]

# extra fragments for some damages: what went wrong, in words
SAYS = {nan_weights: "not finite"}
# a missing checkpoint: the run stopped before its first one, so the advice is to start again
NAMES = {("checkpoints/last.pt", missing): "before its first checkpoint"}

CASES = {f"{kind}/{name}-{damage.__name__}-{command.__name__}": (kind, name, damage, command, fix)
         for kind, name, damages, commands, fix in MATRIX for damage in damages for command in commands}

# through real subprocesses: every file and every command at least once, with the damages most likely
# to make a library print more than our one line (torch.load's warnings, NaN arithmetic)
SAMPLE = [
    "plain/config.yaml-utf16-predict",
    "plain/config.yaml-another_runs-resume",
    "plain/data.json-json_wrong_types-evaluate",
    "plain/data.json-truncated-resume",
    "plain/model.safetensors-nan_weights-predict",
    "plain/model.safetensors-random_bytes-evaluate",
    "plain/checkpoints/last.pt-random_bytes-resume",
    "plain/checkpoints/last.pt-nan_weights-resume",
    "dynamic/compression.json-missing-evaluate",
    "dynamic/model.safetensors-another_runs-predict",
    "static/int8.safetensors-truncated-evaluate",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """The trained runs (plain, foreign) and a CSV to predict."""
    base = tmp_path_factory.mktemp("corrupt")
    table = write_csv(base, "train.csv")
    cfg = {"name": "plain", "data": {"source": "csv", "path": str(table), "target": "target"},
           "model": tiny_mlp(), "train": quick_train(epochs=1)}
    plain = layerwise.train(cfg, runs_dir=base / "runs", quiet=True)
    foreign = layerwise.train({**cfg, "name": "foreign", "model": tiny_mlp(hidden=[8, 8])}, runs_dir=base / "runs",
                              quiet=True)
    return {"plain": plain.path, "foreign": foreign.path, "inputs": write_csv(base, "inputs.csv", n=20, seed=1)}


@pytest.fixture(scope="module")
def every_run(shared) -> dict:
    """``shared`` and the plain run's int8 compressions (dynamic, static)."""
    plain = layerwise.load_run(shared["plain"])
    return {**shared, "dynamic": plain.compress(quantize="dynamic").path,
            "static": plain.compress(quantize="static", calibration_batches=2).path}


def runs_for(request, *cases: str) -> dict:
    """The runs ``cases`` need: the compressed ones only when one of them damages a compressed run."""
    plain = all(CASES[case][0] == "plain" for case in cases)
    return request.getfixturevalue("shared" if plain else "every_run")


def damaged(shared: dict, case: str, where: Path) -> list:
    """Copy the case's run into ``where``, damage its file, and return the command's arguments."""
    kind, name, damage, command, _ = CASES[case]
    run_dir = Path(shutil.copytree(shared[kind], where / "run"))
    foreign = shared["foreign" if kind == "plain" else "plain"] / ("model.safetensors" if kind != "plain" else name)
    damage(run_dir / name, foreign)
    return command(run_dir, shared)


def check(case: str, code: int, err: str) -> None:
    kind, name, damage, command, fix = CASES[case]
    named = NAMES.get((name, damage), Path(name).name)
    if damage is another_runs and kind == "plain":
        fix = "restore the run's own"
    if name == "config.yaml" and command is resume:
        fix = ""  # train() reads a resumed run's config as it reads an experiment file: its fix is for one
    line = assert_one_line_error(code, err, named, *([fix] if fix else []), *([SAYS[damage]] if damage in SAYS else []))
    if damage is another_runs and kind == "plain":  # which of the two files is the other run's? both named
        assert "config.yaml" in line, line


def test_the_sample_covers_every_file_and_command():
    assert len(CASES) >= 90
    assert set(SAMPLE) <= set(CASES)
    sampled = [CASES[case] for case in SAMPLE]
    assert {(kind, name) for kind, name, *_ in sampled} == {(kind, name) for kind, name, *_ in MATRIX}
    assert {command for *_, command, _ in sampled} == set(EVERY)


def _params(cases) -> list:
    """Cases of compressed runs are slow: compressing (static int8 calibrates) takes seconds."""
    return [pytest.param(case, marks=[pytest.mark.slow] if CASES[case][0] != "plain" else []) for case in cases]


@pytest.mark.parametrize("case", _params(sorted(CASES)))
def test_a_damaged_run_file_fails_in_one_line(case, request, tmp_path, capsys):
    from layerwise.cli.main import main

    args = damaged(runs_for(request, case), case, tmp_path)
    capsys.readouterr()
    code = main([str(a) for a in args])
    check(case, code, capsys.readouterr().err)


@pytest.fixture(scope="module")
def sampled(request, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """The selected sample's commands, each a fresh ``python -m layerwise`` process, a few at a time."""
    selected = [case for case in SAMPLE if any(getattr(item, "originalname", "") == "test_a_damaged_run_file_fails_in_"
                                               "one_line_in_a_fresh_process" and item.callspec.params["case"] == case
                                               for item in request.session.items)]
    shared = runs_for(request, *selected)
    base = tmp_path_factory.mktemp("sampled")
    jobs = {}
    for i, case in enumerate(selected):
        (base / str(i)).mkdir()
        jobs[case] = (damaged(shared, case, base / str(i)), base / str(i))
    with ThreadPoolExecutor(max_workers=max(2, min(4, (os.cpu_count() or 2) + 1))) as pool:
        return dict(zip(jobs, pool.map(lambda job: cli(*job[0], cwd=job[1]), jobs.values())))


@pytest.mark.slow  # eleven processes, each importing torch: twenty seconds on 2 cores
@pytest.mark.parametrize("case", SAMPLE)
def test_a_damaged_run_file_fails_in_one_line_in_a_fresh_process(case, sampled):
    code, _, err = sampled[case]
    check(case, code, err)


# -- in Python: the same errors, and the files only the report reads ------------------------


@pytest.mark.parametrize("damage", [truncated, random_bytes, utf16, history_of_something_else],
                         ids=lambda damage: damage.__name__)
def test_a_damaged_history_is_one_line_and_a_resume_writes_it_again(damage, shared, tmp_path, capsys):
    """Only the report reads history.csv (train, explain, attack, fairness... write one)."""
    from layerwise.cli.main import main

    run_dir = Path(shutil.copytree(shared["plain"], tmp_path / "run"))
    damage(run_dir / "history.csv", shared["foreign"] / "history.csv")
    with pytest.raises(RunError, match=r"history\.csv: .*; delete it .*--resume") as info:
        layerwise.load_run(run_dir).report()
    assert "\n" not in str(info.value)
    # the checkpoint holds the history: a resume writes the file again, even with no epoch left to train
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert [row["epoch"] for row in layerwise.load_run(run_dir).history] == [1]


@pytest.mark.parametrize("text", ["", "{not json", "[]", '"metrics"'])
def test_damaged_metrics_json_is_a_run_error(shared, tmp_path, text):
    run_dir = Path(shutil.copytree(shared["plain"], tmp_path / "run"))
    (run_dir / "metrics.json").write_text(text)
    with pytest.raises(RunError, match=r"metrics\.json.*delete it") as info:
        layerwise.load_run(run_dir).metrics  # noqa: B018
    assert "\n" not in str(info.value)


def test_missing_history_and_metrics_are_simply_absent(shared, tmp_path):
    run_dir = Path(shutil.copytree(shared["plain"], tmp_path / "run"))
    (run_dir / "history.csv").unlink()
    (run_dir / "metrics.json").unlink()
    run = layerwise.load_run(run_dir)
    assert run.history == [] and run.metrics == {}
    assert run.report().is_file()


def test_a_resumed_run_rewrites_damaged_metrics(shared, tmp_path, capsys):
    from layerwise.cli.main import main

    run_dir = Path(shutil.copytree(shared["plain"], tmp_path / "run"))
    (run_dir / "metrics.json").write_bytes(b"\xff\xfe not json")
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert "metrics" in json.loads((run_dir / "metrics.json").read_text())


def test_weights_of_the_other_run_name_both_files(shared, tmp_path):
    run_dir = Path(shutil.copytree(shared["plain"], tmp_path / "run"))
    shutil.copy2(shared["foreign"] / "config.yaml", run_dir / "config.yaml")
    with pytest.raises(RunError) as info:
        layerwise.load_run(run_dir).model  # noqa: B018
    message = str(info.value)
    assert "model.safetensors" in message and "config.yaml" in message
    # 53 inputs: the recipe's periodic embeddings, 16 per scalar feature (a, b, b=<missing>), then
    # the 5 one-hot columns of color
    assert "body.0.weight is [16, 53] in the file, [8, 53] in the model" in message
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["hidden"] == [8, 8]
    assert isinstance(info.value.__cause__, RuntimeError)  # --debug shows what torch said
