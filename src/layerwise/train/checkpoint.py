"""Checkpoints written atomically, loaded without unpickling arbitrary objects.

A checkpoint holds everything needed to continue exactly: model, optimizers, schedulers,
callbacks, every random number generator, the epoch, the batch within it and the step count.
It is written to a temporary file in the same folder and renamed over the old one, so a process
killed mid-write leaves the previous checkpoint intact. Loading uses ``weights_only=True``.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import RunError
from ..core.io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "state_mismatch", "rng_state", "set_rng_state", "seed_everything"]


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
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a Python file: a full disk surfaces as OSError(ENOSPC), not 'unexpected pos'
            torch.save(state, fh)

    atomic_write(path, write)


# what to do about a damaged checkpoint: step-*.pt and best.pt exist when train.checkpoints kept them
CHECKPOINT_FIX = ("copy a good checkpoint of the run over it (checkpoints/step-*.pt or best.pt, if it kept them), "
                  "or start the experiment again")

# what a training checkpoint holds (Trainer.state_dict), beyond which a file is not one
CHECKPOINT_KEYS = ("model", "optimizers", "callbacks", "rng", "epoch", "batch_in_epoch", "global_step", "history")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint: tensors and plain containers only, with every entry a resume reads."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}; the run has not finished an epoch yet, start it again without --resume")
    try:
        with warnings.catch_warnings():  # a refused pickle also warns: our one line says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or foreign file: say which, keep the traceback for --debug
        problem = "empty" if path.stat().st_size == 0 else type(exc).__name__
        raise RunError(f"{path}: unreadable checkpoint ({problem}); {CHECKPOINT_FIX}") from exc
    absent = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else ["model"]
    if absent or not isinstance(state["model"], dict):
        what = f"no '{absent[0]}' entry" if absent else "its 'model' entry is not a state dict"
        raise RunError(f"{path}: not a layerwise training checkpoint ({what}); {CHECKPOINT_FIX}")
    return state


def state_mismatch(exc: RuntimeError) -> str:
    """What ``load_state_dict`` found wrong, in one line: a size mismatch when there is one (its
    message starts with a line naming only the module's class, then one line per problem)."""
    lines = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
    sizes = [line for line in lines if line.startswith("size mismatch")]
    first = (sizes or lines or [str(exc).strip()])[0]
    # "size mismatch for w: copying a param with shape torch.Size([8, 6]) from checkpoint, the shape in
    # current model is torch.Size([16, 6])" -> "w is [8, 6] in the file, [16, 6] in the model"
    shapes = re.match(r"size mismatch for (\S+): .*?torch\.Size\((\[[^]]*\])\).*torch\.Size\((\[[^]]*\])\)", first)
    if shapes:
        first = "{} is {} in the file, {} in the model".format(*shapes.groups())
    return first[:200]
