"""Loading an experiment: the YAML (or dict) validated in two stages against the registries.

The sections' schemas live with their layers' base classes in ``core.config``; this module knows the
registries (data sources, model families, tasks, optimizers, schedules), so it sits above them:
stage one checks the top-level sections, stage two each section against the schema its registry
names (``data`` against the source's, ``model`` against the family's), then the names that span
sections.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from ..core.config import (
    EvaluateConfig,
    ExperimentConfig,
    TrainConfig,
    _describe,
    _format_error,
    apply_overrides,
    parse_override,
    validate_section,
)
from ..core.defaults import default_config_dict
from ..core.errors import ConfigError
from ..core.registry import did_you_mean
from ..data import SOURCES
from ..models import FAMILIES
from ..tasks import TASKS
from ..train.optim import OPTIMIZERS, SCHEDULERS

__all__ = ["load_config"]


def _section_schema(registry_name: str, raw: Any, key: str, default: str) -> type[BaseModel]:
    registry = {"data": SOURCES, "model": FAMILIES}[registry_name]
    name = raw.get(key, default) if isinstance(raw, Mapping) else default
    return registry.get(name).Config


def load_config(
    source: str | Path | Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> ExperimentConfig:
    """Validate an experiment from a YAML path, a dict or a config, with dotted overrides.

    >>> cfg = load_config({"data": {"source": "builtin", "name": "iris"}, "model": {"family": "mlp"}},
    ...                   ["train.epochs=3"])
    >>> cfg.train.epochs
    3
    """
    raw = _read_raw(source)
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
        raw = apply_overrides(raw, dict(items))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections at the top level; received {_describe(raw)}")
    known = list(ExperimentConfig.model_fields)
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section{did_you_mean(str(key), known)}; valid sections: {', '.join(known)}")

    data = validate_section(_section_schema("data", raw.get("data") or {}, "source", "builtin"), raw.get("data"), "data")
    model = validate_section(_section_schema("model", raw.get("model") or {}, "family", "cnn"), raw.get("model"), "model")
    train = validate_section(TrainConfig, raw.get("train"), "train")
    evaluate = validate_section(EvaluateConfig, raw.get("evaluate"), "evaluate")
    rest = {k: raw[k] for k in ("name", "task") if k in raw}
    try:
        config = ExperimentConfig(data=data, model=model, train=train, evaluate=evaluate, **rest)
    except ValidationError as exc:
        raise _format_error(exc, "", ExperimentConfig) from None
    _cross_check(config)
    return config


def _cross_check(config: ExperimentConfig) -> None:
    """Checks that span sections: names that registries must know."""
    if config.task is not None:
        TASKS.get(config.task)
    OPTIMIZERS.get(config.train.optimizer)
    SCHEDULERS.get(config.train.scheduler.name)


def _read_raw(source: Any) -> Any:
    if source is None:
        return default_config_dict()
    if isinstance(source, ExperimentConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass the path of a YAML experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {problem}{where}; fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; pass a YAML experiment file") from None
    return raw if raw is not None else {}
