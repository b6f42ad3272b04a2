"""Bring your own ``nn.Module``: a class from a Python file or module, trained by the same loop.

``model: {family: python, target: "my_module.py:MyNet", args: {hidden: 64}}``. Constructor
parameters named ``spec``, ``num_outputs``, ``num_classes`` or ``input_shape`` are filled from the
data when ``args`` does not set them.

Building the model imports the target, which runs it. From your own config that is the point; from
a run directory someone else wrote it is running their code, so loading such a run needs the user's
trust (``ExternalModel.user_code``, ``layerwise.runs.trust``), except for code this process already
ran from the user's own config, unchanged since (:data:`_ALREADY_RUN`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from . import LayerwiseModel, register_family


class PythonConfig(ModelConfig):
    family: Literal["python"] = "python"
    target: str = Field(..., description="'path/to/file.py:ClassName' or 'package.module:ClassName'")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the constructor")


# what load_class has imported in this process: a file's resolved path -> the SHA-256 of the bytes it
# ran, a module's name -> "". Loading a run that names one of them runs nothing new.
_ALREADY_RUN: dict[str, str] = {}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to one line: errors from a user's code are reported on one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _where(target: str) -> tuple[str, Path | None]:
    """(the file or module part of a target, the file's resolved path when it is a file)."""
    where = target.rpartition(":")[0]
    return where, Path(where).expanduser().resolve() if where.endswith(".py") else None


def load_class(target: str) -> type:
    """Import ``file.py:Name`` or ``package.module:Name``, with one-line errors."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ModelError(f"model.target: expected 'file.py:ClassName' or 'module:ClassName'; received {target!r}")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"model.target: file not found: {path}")
        digest = _digest(path)
        module_name = f"layerwise_user_{path.stem}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise ModelError(f"model.target: importing {path} called sys.exit({exc.code!r}); guard the file's "
                             f"script code with if __name__ == '__main__'") from None
        except Exception as exc:
            raise ModelError(f"model.target: importing {path} failed: {type(exc).__name__}: {_first_line(exc)}") from None
        _ALREADY_RUN[str(path)] = digest
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ModelError(f"model.target: cannot import module '{where}': {exc}") from None
        except SystemExit as exc:
            raise ModelError(f"model.target: importing module '{where}' called sys.exit({exc.code!r}); guard its "
                             f"script code with if __name__ == '__main__'") from None
        _ALREADY_RUN[where] = ""
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelError(f"model.target: '{where}' has no attribute '{name}'")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"model.target: '{name}' is not a torch.nn.Module subclass")
    return cls


def _fill_from_spec(cls: type, args: dict[str, Any], spec) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    known = {"spec": spec, "num_outputs": spec.num_outputs, "num_classes": spec.num_outputs,
             "input_shape": tuple(spec.input_shape)}
    filled = dict(args)
    for key, value in known.items():
        if key in params and key not in filled:
            filled[key] = value
    return filled


@register_family("python")
class ExternalModel(LayerwiseModel):
    """A user's own nn.Module; the whole module counts as the feature extractor."""

    accepts = frozenset()  # any input kind: the user's module decides
    Config = PythonConfig

    def __init__(self, config: PythonConfig, spec, module: nn.Module | None = None):
        super().__init__(config, spec)
        if module is None:
            cls = load_class(config.target)
            args = _fill_from_spec(cls, config.args, spec)
            try:
                module = cls(**args)
            except TypeError as exc:
                raise ModelError(f"model.args: {cls.__name__}({', '.join(args)}) failed: {exc}") from None
            except Exception as exc:  # the user's own code: name it and what it raised
                raise ModelError(f"model.target: building {cls.__name__} from {_where(config.target)[0]} failed: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from None
            except SystemExit as exc:
                raise ModelError(f"model.target: building {cls.__name__} from {_where(config.target)[0]} called "
                                 f"sys.exit({exc.code!r}); a model's constructor must raise an exception instead") from None
        self.module = module
        self.head = nn.Identity()

    @classmethod
    def user_code(cls, config: PythonConfig) -> str | None:
        """The target's file (or module) unless this process already imported it, unchanged since."""
        where, path = _where(config.target)
        if path is None:  # importing __main__ (the running script) runs nothing new
            return None if where in _ALREADY_RUN or where == "__main__" else f"module '{where}'"
        ran = _ALREADY_RUN.get(str(path))
        if ran is not None and path.is_file() and _digest(path) == ran:
            return None
        return str(path)

    @classmethod
    def around(cls, module: nn.Module, spec, target: str | None = None) -> "ExternalModel":
        qualname = target or f"{type(module).__module__}:{type(module).__qualname__}"
        config = PythonConfig(target=qualname)
        return cls(config, spec, module=module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @property
    def num_features(self) -> int:
        return self.spec.num_outputs

    def reset_head(self, num_outputs: int) -> None:
        raise ModelError("a user module's head cannot be replaced generically; change num_outputs in its own code")
