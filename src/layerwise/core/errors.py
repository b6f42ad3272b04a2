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
