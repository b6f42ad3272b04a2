"""Data sources, the data spec models are built from, and batch loading.

A source is one class registered with ``@register_source("name")``: a ``Config`` schema (its own
keys beside the common ones of :class:`~layerwise.core.config.DataConfig`) and a ``read`` method that
returns :class:`RawData`. Splitting and preprocessing are shared (``pipeline.build_bundle``); what
depends on the kind of input (tabular, image, tokens...) is its module in ``data.kinds``.
Sources whose splits are not a random draw of samples (a time series split chronologically, a
text cut into token blocks) override :meth:`DataSource.load` and build their bundle themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..core.config import DataConfig
from ..core.registry import Registry, import_submodules
from .spec import DataBundle, DataSpec, RawData, Split

__all__ = ["where", "SOURCES", "DataSource", "register_source", "load_data", "DataBundle", "DataSpec", "RawData", "Split"]

SOURCES: Registry[type["DataSource"]] = Registry("data source", key="data.source")


class DataSource:
    """A place data comes from. Subclasses set ``Config`` and implement :meth:`read`."""

    Config: ClassVar[type[DataConfig]] = DataConfig
    description: ClassVar[str] = ""

    def read(self, cfg: Any, task: str | None) -> RawData:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, cfg: Any, task: str | None) -> DataBundle:
        """Read, split and preprocess: the shared pipeline unless a source needs its own."""
        from .pipeline import build_bundle

        return build_bundle(self.read(cfg, task), cfg, task)


def where(path) -> str:
    """A path for messages; relative paths say what they are relative to (the working directory)."""
    from pathlib import Path

    path = Path(path)
    return str(path) if path.is_absolute() else f"{path} (relative to {Path.cwd()})"


def register_source(name: str):
    """Class decorator adding a :class:`DataSource` under ``name``."""
    return SOURCES.register(name)


def load_data(cfg: DataConfig, task: str | None = None) -> DataBundle:
    """Read, split and preprocess the data a config names.

    >>> from layerwise.core.config import load_config
    >>> bundle = load_data(load_config({"data": {"name": "iris"}, "model": {"family": "mlp"}}).data)
    >>> bundle.spec.num_classes
    3
    """
    return SOURCES.get(cfg.source)().load(cfg, task)


# each source file registers itself: adding a file adds a source
import_submodules(__name__, skip=("spec", "preprocess", "pipeline", "loader"))
