"""Helpers shared by the tests: builders of small real data files and the CLI run as a subprocess.

Fixtures in conftest.py bind these to ``tmp_path``; module-scoped setups call them directly.
Everything is built from scikit-learn's bundled data sets, so tests go through the same readers a
user's files do.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from layerwise.core.callback import Callback
from layerwise.data.spec import DataSpec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST = SHARED_DATA / "mnist"


# -- interrupted runs ------------------------------------------------------------------------


class Killed(BaseException):
    """Not an Exception: nothing in the loop may catch it, as nothing catches a SIGKILL."""


class KillAt(Callback):
    """Dies at optimizer step ``step``: the steps since the last checkpoint are lost, as in a crash."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, trainer, logs) -> None:
        if trainer.global_step == self.step:
            raise Killed


# -- configs ---------------------------------------------------------------------------------


def write_yaml(path: Path, data: Any) -> Path:
    """Write ``data`` (a mapping, or YAML text) to ``path`` and return the path."""
    path = Path(path)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_mlp(**overrides: Any) -> dict[str, Any]:
    """A small MLP config section: no dropout so tests are exact."""
    return {"family": "mlp", "hidden": [16], "dropout": 0.0, **overrides}


def quick_train(**overrides: Any) -> dict[str, Any]:
    """A short, silent training section on the CPU."""
    return {"epochs": 2, "batch_size": 32, "progress": False, "device": "cpu", **overrides}


# -- data files ------------------------------------------------------------------------------


def write_csv(folder: Path, name: str = "data.csv", n: int = 80, junk: tuple[str, int, str] | None = None,
              seed: int = 0) -> Path:
    """A CSV with numeric columns a and b, a text column color, missing values and a 0/1 target.

    ``junk=(column, row, value)`` writes one bad value into a column.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rng.normal(loc=5.0, scale=2.0, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    # the target depends on a and the colour, so a model can learn it
    target = ((a + (color == "red") * 1.5) > 0.5).astype(int)
    frame = pd.DataFrame({"a": a, "b": b, "color": color, "target": target})
    frame.loc[3, "b"] = np.nan  # a missing numeric value
    frame.loc[5, "color"] = np.nan  # a missing category
    if junk is not None:
        column, row, value = junk
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def digit_pixels(label: int, count: int) -> np.ndarray:
    """``count`` sklearn digits of one class as uint8 (count, 8, 8) images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images[digits.target == label][:count] * (255 / 16)).astype(np.uint8)


def write_image_folder(folder: Path, name: str = "images", classes=(0, 1, 2), per_class: int = 10,
                       mode: str = "L", size: int = 8) -> Path:
    """root/<class>/NNN.png from sklearn digits, in Pillow ``mode`` ("L" or "RGB"), ``size`` pixels."""
    from PIL import Image

    root = Path(folder) / name
    for c in classes:
        sub = root / str(c)
        sub.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(digit_pixels(c, per_class)):
            Image.fromarray(pixels, mode="L").resize((size, size)).convert(mode).save(sub / f"{i:03d}.png")
    return root


def write_npz(folder: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    """A .npz archive of the given arrays (x, y, x_test, y_test)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic (0, 0, 0x08, ndim), big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_folder(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> Path:
    """An MNIST-style folder of IDX files built from sklearn's 8x8 digits (classes 0..9)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": slice(0, n_train), "t10k": slice(n_train, n_train + n_test)}
    for prefix, part in parts.items():
        for what, arr, ndim in (("images", pixels[part], 3), ("labels", labels[part], 1)):
            name = f"{prefix}-{what}-idx{ndim}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return folder


# -- runs and the CLI ------------------------------------------------------------------------


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit 2, a single ``error:`` line on stderr naming every fragment, no traceback."""
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def run_dirs(runs: Path) -> list[Path]:
    """The run directories under ``runs`` (none when it does not exist)."""
    return sorted(p for p in Path(runs).iterdir() if p.is_dir()) if Path(runs).exists() else []


def cli_env() -> dict[str, str]:
    """The environment CLI subprocesses run with."""
    env = dict(os.environ)
    env.pop("LAYERWISE_DEBUG", None)
    env["COLUMNS"] = "200"  # rich tables do not wrap metric names
    env.setdefault("OMP_NUM_THREADS", "1")  # several CLI processes may run at once on 2 cores
    return env


def cli_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "layerwise", *map(str, args)]


def cli(*args: Any, cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m layerwise ARGS`` in ``cwd``; return (exit code, stdout, stderr)."""
    proc = subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_in_process(*args: Any, cwd: Path) -> tuple[int, str, str]:
    """``layerwise ARGS`` through the CLI's own entry point in this process (cwd ``cwd``): the same
    exit code and output as :func:`cli` without starting Python and importing torch again (~2 s a
    call on 2 cores). Not thread-safe (it changes directory): for many quick calls in a row."""
    import contextlib
    import io

    from layerwise.cli.main import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # click's own usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


# -- sequence families ---------------------------------------------------------------------------


def sequence_spec(kind: str, steps: int) -> DataSpec:
    """A tiny spec of ``steps`` positions: float features (3 per step) or token ids (vocabulary 23)."""
    if kind == "tokens":
        return DataSpec(kind="tokens", input_shape=(steps,), target="numeric", num_targets=2, vocab_size=23)
    return DataSpec(kind="sequence", input_shape=(steps, 3), target="class", num_classes=3)


def sequence_inputs(spec, batch: int, seed: int = 1, scale: float = 1.0):
    """Seeded random inputs for ``spec``: ids in [0, vocab_size) or scaled Gaussian features."""
    gen = torch.Generator().manual_seed(seed)
    if spec.kind == "tokens":
        return torch.randint(0, spec.vocab_size, (batch, *spec.input_shape), generator=gen)
    return scale * torch.randn(batch, *spec.input_shape, generator=gen)


def run_steps(model, x, state=None):
    """(B, T, ...) -> ((B, T, H), final state) by calling ``model.step`` once per position."""
    state = model.init_state(x.shape[0]) if state is None else state
    outputs = []
    for t in range(x.shape[1]):
        hidden, state = model.step(x[:, t], state)
        outputs.append(hidden)
    return torch.stack(outputs, dim=1), state


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a model's state, to compare with another run's."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equal states (exact resume, exact accumulation)."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def config_error(raw) -> str:
    """The ConfigError ``load_config(raw)`` raises, checked to be one line."""
    from layerwise import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(raw)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message
