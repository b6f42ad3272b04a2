"""A run directory is data: one someone else wrote runs none of their code unless you pass --trust-run.

Payloads that create a file are planted where loading a run would run code: the user-code file or
module a python-family config names, a pickled ExportedProgram where an int8 run keeps its model, a
pickled checkpoint; and file names in a run's JSON that lead out of it. The CLI runs as a subprocess,
as a user would run it, and each payload is shown to be live (it runs when the user opts in, or when
loaded the way the code before this fix loaded it), so "the file was never created" means something.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_one_line_error, cli, quick_train, tiny_mlp, write_npz

import layerwise
from layerwise.core.errors import RunError

USER_MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, hidden, num_classes, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
'''


def payload_module(marker: Path) -> str:
    """USER_MODULE, preceded by a line that creates ``marker`` when the module is imported."""
    return f"open({str(marker)!r}, 'w').write('pwned')\n" + USER_MODULE


class Payload:
    """Unpickling this creates the marker file: what a crafted pickle can do (any call at all)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Iris as a tabular .npz with its own test split, and a test-only .npz to predict."""
    from sklearn.datasets import load_iris

    folder = tmp_path_factory.mktemp("untrusted")
    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:120], order[120:]
    write_npz(folder, "iris.npz", x=x[train].astype(np.float32), y=y[train], x_test=x[test].astype(np.float32),
              y_test=y[test])
    write_npz(folder, "test.npz", x=x[test].astype(np.float32), y=y[test])
    return folder


def _config(folder: Path, name: str, model: dict) -> dict:
    return {"name": name, "data": {"source": "npz", "path": str(folder / "iris.npz")}, "model": model,
            "train": quick_train(epochs=2, lr=0.01)}


@pytest.fixture(scope="module")
def user_run(folder):
    """A python-family run trained here, from the user's own file (user_net.py)."""
    (folder / "user_net.py").write_text(USER_MODULE)
    model = {"family": "python", "target": f"{folder / 'user_net.py'}:TinyNet", "args": {"hidden": 8}}
    return layerwise.train(_config(folder, "user", model), runs_dir=folder / "runs", quiet=True)


@pytest.fixture(scope="module")
def mlp_run(folder):
    return layerwise.train(_config(folder, "mlp", tiny_mlp()), runs_dir=folder / "runs", quiet=True)


@pytest.fixture(scope="module")
def static_run(mlp_run):
    """A static int8 compression of the MLP run."""
    return layerwise.load_run(mlp_run.compress(quantize="static", calibration_batches=2).path)


def received(run, where: Path) -> Path:
    """A copy of ``run``'s directory: the run directory someone sent you."""
    return Path(shutil.copytree(run.path, where))


def set_target(run_dir: Path, target: str) -> None:
    path = run_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["target"] = target
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def evil_program(program: Path, marker: Path) -> bytes:
    """``program`` (a torch.export.save archive) with its pickled sample inputs replaced by a payload:
    torch.export.load retries a pickle that weights_only refuses with weights_only=False."""
    buffer = io.BytesIO()
    torch.save((Payload(marker),), buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            planted = "sample_inputs/" in info.filename and info.filename.endswith(".pt")
            dst.writestr(info.filename, buffer.getvalue() if planted else src.read(info.filename))
    return out.getvalue()


def all_at_once(*commands, cwd: Path):
    """Run CLI commands side by side (each is a fresh process, as a user would start it)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cli(*args, cwd=cwd), commands))


# -- user code named by config.yaml ------------------------------------------------------------


def test_a_run_naming_a_user_file_runs_nothing_without_trust_run(user_run, folder, tmp_path):
    run_dir = received(user_run, tmp_path / "received")
    payload, marker = tmp_path / "payload.py", tmp_path / "pwned.txt"
    payload.write_text(payload_module(marker))
    set_target(run_dir, f"{payload}:TinyNet")
    results = all_at_once(["evaluate", run_dir],
                          ["predict", run_dir, folder / "test.npz", "--out", tmp_path / "p.csv"],
                          ["export", run_dir, "--format", "torchscript", "--out", tmp_path / "m.pt"],  # a tool
                          ["train", "--resume", run_dir, "--set", "train.epochs=3"],
                          cwd=tmp_path)
    for code, _, err in results:
        assert_one_line_error(code, err, str(payload.resolve()), "--trust-run", "config.yaml")
    assert not marker.exists()
    # the payload is live: with the user's word, loading the run imports the file, and it works
    code, out, err = cli("evaluate", run_dir, "--trust-run", cwd=tmp_path)
    assert code == 0, err
    assert marker.exists() and "accuracy" in out


def test_a_run_naming_a_module_runs_nothing_without_trust_run(user_run, tmp_path):
    # `python -m layerwise` puts the working directory on sys.path: a module beside it would be imported
    run_dir = received(user_run, tmp_path / "received")
    marker = tmp_path / "pwned.txt"
    (tmp_path / "payload_mod.py").write_text(payload_module(marker))
    set_target(run_dir, "payload_mod:TinyNet")
    code, _, err = cli("evaluate", run_dir, cwd=tmp_path)
    assert_one_line_error(code, err, "module 'payload_mod'", "--trust-run")
    assert not marker.exists()
    with pytest.raises(RunError, match="payload_mod"):
        layerwise.load_run(run_dir).model  # noqa: B018 - in Python too
    assert not marker.exists()


def test_your_own_run_loads_with_trust_run_or_in_the_process_that_trained_it(user_run, folder, tmp_path):
    (ok, out, err), (refused, _, refusal) = all_at_once(["evaluate", user_run.path, "--trust-run"],
                                                        ["evaluate", user_run.path], cwd=tmp_path)
    assert ok == 0 and "accuracy" in out, err
    # another process never ran user_net.py: it asks, naming the file
    assert_one_line_error(refused, refusal, str((folder / "user_net.py").resolve()), "--trust-run")
    # this process trained from user_net.py, unchanged since: loading its run runs nothing new
    x = np.load(folder / "test.npz")["x"]
    assert (layerwise.load_run(user_run.path).predict(x)["proba"] == user_run.predict(x)["proba"]).all()
    # a file this process ran, changed since, is code it has not run
    edited = tmp_path / "edited.py"
    edited.write_text(USER_MODULE)
    from layerwise.models.python import load_class

    load_class(f"{edited}:TinyNet")
    run_dir = received(user_run, tmp_path / "received")
    set_target(run_dir, f"{edited}:TinyNet")
    assert layerwise.load_run(run_dir).model is not None
    edited.write_text(USER_MODULE + "\n# changed\n")
    with pytest.raises(RunError, match="edited.py.*trust_code=True"):
        layerwise.load_run(run_dir).model  # noqa: B018
    assert layerwise.load_run(run_dir, trust_code=True).model is not None


# -- pickles -----------------------------------------------------------------------------------


def test_an_int8_run_loads_without_unpickling_and_an_older_pickled_one_needs_trust_run(static_run, tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = evil_program(static_run.path / "model.pt2", marker)
    # today's static int8 run: model.pt2 is for deployment; the run loads from safetensors
    current = received(static_run, tmp_path / "current")
    (current / "model.pt2").write_bytes(evil)
    # an older one held only the program, and loaded it with torch.export.load
    older = received(static_run, tmp_path / "older")
    (older / "model.pt2").write_bytes(evil)
    (older / "int8.safetensors").unlink(missing_ok=True)
    info = json.loads((older / "compression.json").read_text())
    info["format"] = "exported-program"
    info.pop("state_file", None)
    (older / "compression.json").write_text(json.dumps(info))

    (code, out, err), (refused, _, refusal) = all_at_once(["evaluate", current], ["evaluate", older], cwd=tmp_path)
    assert code == 0 and "accuracy" in out, err
    assert_one_line_error(refused, refusal, str(older / "model.pt2"), "ExportedProgram", "--trust-run")
    assert not marker.exists()
    # the payload is live: loading the program as the older code did runs it
    try:
        torch.export.load(str(current / "model.pt2"))
    except Exception:  # noqa: BLE001 - the payload is not a real program; what matters is that it ran
        pass
    assert marker.exists()


def test_an_int8_run_reloads_to_the_same_int8_graph(static_run, tmp_path):
    again = layerwise.load_run(static_run.path)
    x = again.preprocessing.inputs.batch(again.data.test.x, False, None)
    info = json.loads((static_run.path / "compression.json").read_text())
    assert (info["format"], info["state_file"]) == ("pt2e-int8", "int8.safetensors")
    # an older run (the program only) still loads when trusted, and computes the same
    older = received(static_run, tmp_path / "older")
    (older / "int8.safetensors").unlink()
    (older / "compression.json").write_text(json.dumps({**info, "format": "exported-program"}))
    program = layerwise.load_run(older, trust_code=True).model
    with torch.no_grad():
        assert torch.equal(again.model(x), static_run.model(x))
        assert torch.allclose(program(x), again.model(x), atol=1e-5)


def test_a_pickled_checkpoint_is_refused_on_resume(mlp_run, tmp_path):
    run_dir = received(mlp_run, tmp_path / "received")
    marker = tmp_path / "pwned.txt"
    torch.save({"model": Payload(marker)}, run_dir / "checkpoints" / "last.pt")  # torch.load's own format
    code, _, err = cli("train", "--resume", run_dir, "--set", "train.epochs=3", cwd=tmp_path)
    assert_one_line_error(code, err, "last.pt")
    assert not marker.exists()


# -- file names read from a run's JSON ---------------------------------------------------------


def test_file_names_in_compression_json_stay_inside_the_run(mlp_run, static_run, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(mlp_run.path / "model.safetensors", outside / "model.safetensors")
    run_dir = received(mlp_run, tmp_path / "received")
    escape = {"format": "dense", "model_file": "../outside/model.safetensors"}
    (run_dir / "compression.json").write_text(json.dumps(escape))
    code, _, err = cli("evaluate", run_dir, cwd=tmp_path)
    assert_one_line_error(code, err, "compression.json: model_file", "'../outside/model.safetensors'", "outside")
    # an absolute name, a link out of the run, and the int8 state file are held to the same rule
    (run_dir / "link.safetensors").symlink_to(outside / "model.safetensors")
    for name in (str(outside / "model.safetensors"), "link.safetensors"):
        (run_dir / "compression.json").write_text(json.dumps({"format": "dense", "model_file": name}))
        with pytest.raises(RunError, match="points outside"):
            layerwise.load_run(run_dir).model  # noqa: B018
    int8 = received(static_run, tmp_path / "int8")
    shutil.copy2(int8 / "int8.safetensors", outside / "int8.safetensors")
    info = json.loads((int8 / "compression.json").read_text())
    (int8 / "compression.json").write_text(json.dumps({**info, "state_file": "../outside/int8.safetensors"}))
    with pytest.raises(RunError, match="state_file '../outside/int8.safetensors' points outside"):
        layerwise.load_run(int8).model  # noqa: B018


def test_picture_names_in_explain_json_stay_inside_the_run(mlp_run, tmp_path):
    from PIL import Image

    run_dir = received(mlp_run, tmp_path / "received")
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")  # a picture of yours, beside the run you received
    (run_dir / "explain").mkdir()
    saved = {"indices": [0], "split": "test", "methods": ["saliency"], "targets": ["0"], "files": ["../../secret.png"]}
    (run_dir / "explain" / "explain.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match="explain.json: files '../../secret.png' points outside"):
        layerwise.load_run(run_dir).report()
