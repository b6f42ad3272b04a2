"""The error hierarchy.

Every error a user can cause is a :class:`LayerwiseError`. The CLI prints its message on one line
and exits with code 2; anything else is a bug and keeps its traceback. Each class also inherits the
builtin exception a Python user would expect (a config error is a ``ValueError``), so ``except
ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "LayerwiseError",
    "ConfigError",
    "DataError",
    "ModelError",
    "RunError",
    "TrainingDivergedError",
    "MissingExtraError",
    "PluginError",
    "DiskFullError",
    "RunLockedError",
    "TrainingInterrupted",
]


class LayerwiseError(Exception):
    """Base class for every error caused by user input; its message is one actionable line."""


class ConfigError(LayerwiseError, ValueError):
    """The experiment config is invalid; the message names the key path."""


class DataError(LayerwiseError, ValueError):
    """A data file or column is missing, unreadable or malformed; the message names which."""


class ModelError(LayerwiseError, ValueError):
    """A model cannot be built for the given data (wrong input kind, bad user module...)."""


class RunError(LayerwiseError, FileNotFoundError):
    """A run directory is missing, incomplete or of an incompatible version."""


class TrainingDivergedError(LayerwiseError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class MissingExtraError(LayerwiseError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class PluginError(LayerwiseError, ImportError):
    """An installed plugin package (entry-point group ``layerwise.plugins``) failed to load."""


class DiskFullError(LayerwiseError, OSError):
    """A write failed for lack of space (or quota); the file it replaces is intact. ``problem``: what
    failed and how much space there is; the message adds ``advice`` (what to do next)."""

    def __init__(self, problem: str, advice: str = "files written before are intact; free some space and run the "
                                                   "command again"):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem

    def __str__(self) -> str:
        return self.args[0]


class RunLockedError(RunError):
    """Another process is training in this run directory."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM. A ``KeyboardInterrupt``, so ``except KeyboardInterrupt``
    keeps working; its message says what was kept and how to continue. ``signum``: the signal."""

    def __init__(self, message: str = "interrupted", signum: int = 2):
        super().__init__(message)
        self.signum = signum


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error naming the extra that provides it.

    >>> np = require("numpy", "core")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this feature needs the '{module}' package: install it with "
            f"pip install 'layerwise[{extra}]'"
        ) from exc
