"""Checkpoints written atomically, loaded without unpickling arbitrary objects.

A checkpoint holds everything needed to continue exactly: model, optimizers, schedulers,
callbacks, every random number generator, the epoch, the batch within it and the step count.
It is written to a temporary file in the same folder and renamed over the old one, so a process
killed mid-write leaves the previous checkpoint intact. Loading uses ``weights_only=True``.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import RunError
from ..core.io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA): the one place seeding happens."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": _plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_s = state["numpy"]
    np.random.set_state(("MT19937", np_s["keys"].numpy().astype(np.uint32), np_s["pos"], np_s["has_gauss"], np_s["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj):
    if isinstance(obj, tuple):
        return [_plain(o) for o in obj]
    return obj


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}; the run has not finished an epoch yet, start it again without --resume")
    try:
        with warnings.catch_warnings():  # a refused pickle also warns: our one line says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or foreign file: say which, keep the traceback for --debug
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it to restart from scratch") from exc
