"""What a run directory may make this process do: be read as data, and run code only when trusted.

A run directory is data: JSON, YAML read with ``yaml.safe_load``, safetensors. A directory someone
sent you may still name code, in two ways, and loading it runs that code:

- ``config.yaml`` names a ``python``-family model (``model.target``): building the model imports the
  user's file or module, which runs it;
- a graph-mode int8 run written by an older layerwise holds only ``model.pt2``, an ExportedProgram,
  and ``torch.export.load`` unpickles.

Both need the user's explicit word: ``load_run(path, trust_code=True)``, or for everything one
command loads, the CLI's ``--trust-run`` (:func:`trusting_runs`). Code this process has already run
from the user's own config (training a python-family model, then loading its run) needs none: the
check is :meth:`LayerwiseModel.user_code`. And every file name a run's JSON gives is kept inside the
run directory (:func:`inside`). See ``docs/security.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from ..core.config import ModelConfig
from ..core.errors import RunError
from ..models import FAMILIES

__all__ = ["OPT_IN", "check_model_code", "inside", "trusted", "trusting_runs"]

OPT_IN = "pass --trust-run (Python: trust_code=True) if you trust this run directory"

# set by the CLI's --trust-run for the whole command: the RUN argument and any run it loads in turn
# (a synthetic source's generator, quality's classifier)
_TRUST_RUNS: ContextVar[bool] = ContextVar("layerwise_trust_runs", default=False)


@contextlib.contextmanager
def trusting_runs(trust: bool = True) -> Iterator[None]:
    """Within the block, every run loaded is trusted as with ``trust_code=True`` (``trust=False``: no change).

    >>> with trusting_runs():                                     # doctest: +SKIP
    ...     layerwise.load_run("runs/user-net").predict(x)
    """
    token = _TRUST_RUNS.set(trust or _TRUST_RUNS.get())
    try:
        yield
    finally:
        _TRUST_RUNS.reset(token)


def trusted(trust_code: bool) -> bool:
    """Whether a run loaded now with ``trust_code`` may run code: asked for, or inside :func:`trusting_runs`."""
    return bool(trust_code) or _TRUST_RUNS.get()


def check_model_code(config: ModelConfig, run_path: Path, trust_code: bool) -> None:
    """Refuse to build a run's model when that would run user code the user has not trusted."""
    if trusted(trust_code):
        return
    code = FAMILIES.get(config.family).user_code(config)
    if code is not None:
        raise RunError(f"{run_path / 'config.yaml'} names user code as its model ({code}); building the model "
                       f"would import and run it: {OPT_IN}")


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused when it leads out of ``folder`` (``..``, an absolute path, a link).

    ``what`` says where the name was read, for the message (``compression.json: model_file``)."""
    path = Path(folder) / str(name)
    root = Path(folder).resolve()
    if not path.resolve().is_relative_to(root):
        raise RunError(f"{what} {name!r} points outside {folder}; a run's files are read only from inside it")
    return path
