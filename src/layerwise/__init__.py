"""layerwise: the deep-learning lifecycle on PyTorch, from a YAML file or a few lines of Python.

>>> import layerwise
>>> run = layerwise.train()                        # the embedded default: a CNN on bundled digits
>>> run.evaluate()["accuracy"]                     # doctest: +SKIP
>>> run = layerwise.load_run(run.path); run.predict(x)   # doctest: +SKIP
"""

from __future__ import annotations

from .core import __version__  # noqa: E402
from .core.config import DataConfig, ExperimentConfig, ModelConfig, TaskConfig  # noqa: E402
from .runs.config import load_config  # noqa: E402
from .core.errors import (ConfigError, DataError, LayerwiseError, ModelError, PluginError, RunError,  # noqa: E402
                          TrainingDivergedError, TrainingInterrupted, DiskFullError)
from .models import FAMILIES, LayerwiseModel, register_family  # noqa: E402
from .data import SOURCES, DataSource, register_source  # noqa: E402
from .tasks import TASKS, Task, register_task  # noqa: E402
from .train.strategies import STRATEGIES, Strategy, register_strategy  # noqa: E402
from .runs import Run, load_run, train  # noqa: E402
from .runs.tools import TOOLS, ToolOptions, option, register_tool  # noqa: E402
from . import tools  # noqa: E402,F401 - every tool registers its report section, entry points and sources
from .tools.cv import cross_validate  # noqa: E402
from .tools.distill import distill  # noqa: E402

__all__ = [
    "__version__", "train", "load_run", "Run", "cross_validate", "load_config", "ExperimentConfig",
    "LayerwiseError", "ConfigError", "DataError", "ModelError", "RunError", "TrainingDivergedError", "PluginError",
    "TrainingInterrupted", "DiskFullError",
    "ModelConfig", "DataConfig", "TaskConfig",
    "FAMILIES", "LayerwiseModel", "register_family", "SOURCES", "DataSource", "register_source",
    "TASKS", "Task", "register_task", "STRATEGIES", "Strategy", "register_strategy", "distill", "TOOLS", "ToolOptions", "option", "register_tool",
]
