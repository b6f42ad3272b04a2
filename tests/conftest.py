"""Shared fixtures: tiny data files written into tmp_path, and the CLI run as a real subprocess."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytest.register_assert_rewrite("helpers")

import helpers  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the README's command runs two workers on two cores: one thread each, in this process and in
    # every CLI subprocess it starts, rather than two each competing for the same cores
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """An empty runs directory (created on demand by the code under test)."""
    return tmp_path / "runs"


@pytest.fixture
def make_csv(tmp_path: Path) -> Callable[..., Path]:
    """``make_csv(name="data.csv", n=80, junk=None, seed=0)``: numeric + text columns, missing
    values, a 0/1 target (see :func:`helpers.write_csv`)."""
    return partial(helpers.write_csv, tmp_path)


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_image_folder(name="images", classes=(0, 1, 2), per_class=10, mode="L", size=8)``:
    PNG files from sklearn digits, one sub-folder per class."""
    return partial(helpers.write_image_folder, tmp_path)


@pytest.fixture
def make_npz(tmp_path: Path) -> Callable[..., Path]:
    """``make_npz(name="data.npz", x=..., y=..., x_test=..., y_test=...)``."""
    return partial(helpers.write_npz, tmp_path)


@pytest.fixture
def iris_npz(make_npz) -> Path:
    """Iris as a tabular .npz with its own test split (x, y, x_test, y_test)."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:120], order[120:]
    return make_npz("iris.npz", x=x[train].astype(np.float32), y=y[train], x_test=x[test].astype(np.float32),
                    y_test=y[test])


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """``run_cli(*args)``: ``python -m layerwise ARGS`` in a subprocess (cwd tmp_path) →
    (exit code, stdout, stderr)."""

    def run(*args, timeout: float = 300, cwd: Path | None = None) -> tuple[int, str, str]:
        return helpers.cli(*args, cwd=cwd or tmp_path, timeout=timeout)

    return run
