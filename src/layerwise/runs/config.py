"""Loading an experiment: the YAML (or dict) validated in two stages against the registries.

The sections' schemas live with their layers' base classes in ``core.config``; this module knows the
registries (data sources, model families, tasks, optimizers, schedules), so it sits above them:
stage one checks the top-level sections, stage two each section against the schema its registry
names (``data`` against the source's, ``model`` against the family's, ``task`` against the task's),
then the names that span sections.

Keys that moved keep their old spelling for one release (:data:`MOVED`): before validation they are
taken out of their old section and put into the task's, with a :class:`ConfigDeprecationWarning`
that gives the new spelling; errors in their values still name the path the user wrote.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from ..core.config import (
    EvaluateConfig,
    ExperimentConfig,
    TaskConfig,
    TrainConfig,
    YAMLValueError,
    _describe,
    _format_error,
    _key,
    apply_overrides,
    check_nesting,
    parse_override,
    read_yaml,
    validate_section,
    warn_deprecated,
)
from ..core.defaults import default_config_dict
from ..core.errors import ConfigError
from ..core.registry import did_you_mean
from ..data import SOURCES
from ..models import FAMILIES
from ..tasks import TASKS
from ..train.adversarial import check_adversarial
from ..train.optim import OPTIMIZERS, SCHEDULERS
from ..train.strategies import STRATEGIES

__all__ = ["load_config", "resolve_task_options", "MOVED"]


@dataclass(frozen=True)
class Moved:
    """A key that moved into a task's section: ``section.key`` is now ``task: {name: task, new_key: ...}``."""

    section: str
    key: str
    task: str  # the task whose section holds it now
    new_key: str
    family: str | None = None  # a model key moved only for this family
    refused: bool = False  # other tasks refused it (an error now too) rather than ignoring it

    @property
    def old(self) -> str:
        return f"{self.section}.{self.key}"


# deprecated spellings, accepted until the next release
MOVED = (
    Moved("train", "label_smoothing", "classification", "label_smoothing"),
    Moved("train", "class_weight", "classification", "class_weight"),
    Moved("train", "adversarial", "classification", "adversarial_training", refused=True),
    Moved("evaluate", "importance_samples", "vae", "importance_samples"),
    Moved("model", "lr_g", "adversarial", "lr_g", family="gan"),
    Moved("model", "lr_d", "adversarial", "lr_d", family="gan"),
    Moved("model", "betas", "adversarial", "betas", family="gan"),
)


def _registered(registry_name: str, raw: Any, key: str, default: str) -> Any:
    """The source or family class a section names (its ``Config`` is the section's schema)."""
    registry = {"data": SOURCES, "model": FAMILIES}[registry_name]
    name = raw.get(key, default) if isinstance(raw, Mapping) else default
    if not isinstance(name, str):  # a list or a mapping cannot name an entry (nor be looked up: unhashable)
        raise ConfigError(f"{registry_name}.{key}: expected a name such as '{default}'; received "
                          f"{type(name).__name__} {_describe(name)}")
    return registry.get(name)


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
        check_nesting(raw)  # an override's value is YAML too
    known = [k for k, field in ExperimentConfig.model_fields.items() if not field.exclude]  # the YAML's sections
    for key in raw:
        if key not in known:
            raise ConfigError(f"{_key(key)}: unknown section{did_you_mean(str(key), known)}; valid sections: "
                              f"{', '.join(known)}")

    raw = dict(raw)
    task_name, task_raw = _task_section(raw.get("task"))
    source_cls = _registered("data", raw.get("data") or {}, "source", "builtin")
    family_cls = _registered("model", raw.get("model") or {}, "family", "cnn")
    # the task's schema is known now when the config names it or the family or source implies it (as
    # infer_task has it); else only once the run has read its data
    known_task = task_name or getattr(family_cls, "implies_task", None) or getattr(source_cls, "implies_task", None)
    origins = _move_deprecated(raw, known_task, task_raw)
    data = validate_section(source_cls.Config, raw.get("data"), "data")
    model = validate_section(family_cls.Config, raw.get("model"), "model")
    options = _task_options(known_task, task_raw, origins) if task_name or task_raw else None
    train = validate_section(TrainConfig, raw.get("train"), "train")
    evaluate = validate_section(EvaluateConfig, raw.get("evaluate"), "evaluate")
    rest = {k: raw[k] for k in ("name", "recipe") if k in raw}
    try:
        config = ExperimentConfig(data=data, model=model, task=task_name, task_options=options, train=train,
                                  evaluate=evaluate, **rest)
    except ValidationError as exc:
        raise _format_error(exc, "", ExperimentConfig) from None
    _cross_check(config)
    return config


def _cross_check(config: ExperimentConfig) -> None:
    """Checks that span sections: names that registries must know."""
    OPTIMIZERS.get(config.train.optimizer)
    SCHEDULERS.get(config.train.scheduler.name)
    STRATEGIES.get(config.train.strategy)


# ----------------------------------------------------------------------------------------------
# the task section


def _task_section(raw: Any) -> tuple[str | None, dict[str, Any]]:
    """``task:`` as (name or None, the options' raw keys): a name, a mapping with ``name``, or absent.
    A named task must be registered (stage two needs its schema)."""
    if raw is None:
        return None, {}
    if isinstance(raw, str):
        TASKS.get(raw)
        return raw, {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"task: expected a task name (task: classification) or a mapping of its name and options "
                          f"(task: {{name: classification, label_smoothing: 0.1}}); received {_describe(raw)}")
    options = {str(k): v for k, v in raw.items() if k != "name"}
    name = raw.get("name")
    if name is None:
        return None, options
    if not isinstance(name, str):
        raise ConfigError(f"task.name: expected a task name; received {_describe(name)}")
    try:
        TASKS.get(name)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("task:", "task.name:", 1)) from None
    return name, options


def _move_deprecated(raw: dict[str, Any], task: str | None, task_raw: dict[str, Any]) -> dict[str, str]:
    """Move the old spellings in ``raw`` into ``task_raw`` (both changed in place); returns the moved
    keys' old paths, for error messages. ``task``: the run's task when it is known already.

    A value equal to its default is dropped without a word: every run directory written before the
    move lists every default (``label_smoothing: 0.0`` in a regression run too), and it changes nothing."""
    origins: dict[str, str] = {}
    for moved in MOVED:
        section = raw.get(moved.section)
        if not isinstance(section, Mapping) or moved.key not in section:
            continue
        if moved.family is not None and section.get("family") != moved.family:
            continue
        section = dict(section)
        value = section.pop(moved.key)
        raw[moved.section] = section
        if _is_default(TASKS.get(moved.task).Config, moved.new_key, value):
            continue
        target = task or moved.task
        if moved.new_key not in TASKS.get(target).Config.model_fields:
            if moved.refused:
                check_adversarial(TASKS.get(target))  # the refusal the run would have given
            warn_deprecated(f"{moved.old} is deprecated, and the '{target}' task takes no {moved.new_key}: it is "
                            f"ignored; remove it")
            continue
        if moved.new_key in task_raw:
            raise ConfigError(f"{moved.old}: given twice, here and as task.{moved.new_key}; keep task.{moved.new_key} "
                              f"({moved.old} is the old spelling)")
        task_raw[moved.new_key] = value
        origins[moved.new_key] = moved.old
        shown = f"{moved.new_key}: {_inline(value)}"
        warn_deprecated(f"{moved.old} is deprecated; write it as task: {{name: {target}, {shown}}}")
    return origins


def _inline(value: Any) -> str:
    """``value`` written as YAML on one line, for a warning (cut past 100 characters)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    text = text.strip().removesuffix("...").strip()  # a scalar's document ends with "..."
    if "\n" in text:  # YAML folds a string's line break onto a new line; JSON (which is YAML) escapes it
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def _is_default(schema: type[TaskConfig], key: str, value: Any) -> bool:
    field = schema.model_fields[key]
    try:
        parsed = getattr(schema.model_validate({key: value}), key)
    except ValidationError:
        return False  # an invalid value: validation names it, at the path the user wrote
    return parsed == field.get_default(call_default_factory=True)


def _task_options(task: str | None, raw: dict[str, Any], origins: Mapping[str, str]) -> TaskConfig | None:
    """The options validated against the task's schema; without a known task, against the schema of
    the first task (by name) that has every key given, for the run to check against the task it infers."""
    if task is not None:
        return validate_section(TASKS.get(task).Config, raw, "task", origins)
    if not raw:
        return None
    schemas = [cls.Config for _, cls in TASKS.items()]
    keys = set(raw)
    fitting = [s for s in schemas if keys <= set(s.model_fields)]
    # no schema has them all: the one with most of them says which key is unknown, with a suggestion
    schema = fitting[0] if fitting else max(schemas, key=lambda s: len(keys & set(s.model_fields)))
    return validate_section(schema, raw, "task", origins)


def resolve_task_options(config: ExperimentConfig, task_cls: type, spec) -> TaskConfig:
    """The run's options for the task it runs, ``task_cls``: ``config.task_options`` when they are that
    task's, else their non-default values validated against its schema (options given before the
    task was inferred, or kept from another task, e.g. ``model_copy(update={"task": ...})``).

    Called while preparing a run, before any file is written."""
    options = config.task_options
    schema = task_cls.Config
    if options is None:
        return schema()
    if type(options) is schema:
        return options
    given = options.model_dump(exclude_defaults=True)
    if given.get("adversarial_training") is not None:
        check_adversarial(task_cls, spec)  # its own refusal says more than "unknown key"
    for key in given:
        if key not in schema.model_fields:
            valid = ", ".join(schema.model_fields) or "none"
            raise ConfigError(f"task.{key}: the '{task_cls.name}' task this run trains takes no {key} (its options: "
                              f"{valid}); remove it, or name the task it belongs to (task: {{name: ...}})")
    return validate_section(schema, given, "task")


def _read_raw(source: Any) -> Any:
    if source is None:
        return default_config_dict()
    if isinstance(source, ExperimentConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        check_nesting(source)  # before the copy, which would recurse as deep
        return copy.deepcopy(dict(source))
    if not isinstance(source, (str, PathLike)):  # e.g. what yaml.safe_load made of a file that is a list
        raise ConfigError(f"config: expected a mapping of sections, a YAML file's path or an ExperimentConfig; "
                          f"received {type(source).__name__} {_describe(source)}")
    path = Path(source)
    shown = _shown(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {shown}; pass the path of a YAML experiment file")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # a name too long, a file not readable...
        raise ConfigError(f"{shown}: cannot read the config file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: not a text file; pass a YAML experiment file") from None
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        fix = "quote it to keep it text" if isinstance(exc, YAMLValueError) else "fix the YAML syntax"
        raise ConfigError(f"{shown}: {problem}{where}; {fix}") from None
    except RecursionError:
        raise ConfigError(f"{shown}: brackets or indentation nested hundreds of levels deep; a config is a few "
                          f"levels of sections") from None
    if raw is None:  # nothing but whitespace, comments or `null`: a wrong file or an unsaved editor, not "defaults"
        raise ConfigError(f"{shown} is empty: give at least data and model sections, or run `layerwise train` "
                          f"without CONFIG for the built-in default")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{shown}: expected a mapping of sections (data:, model:, train:...) at the top level; "
                          f"received {type(raw).__name__} {_describe(raw)}")
    check_nesting(raw)
    return raw


def _shown(path: Path) -> str:
    """A path as a one-line message names it: a line break shows as ``\\n``, a long path loses its middle."""
    text = str(path)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= 160 else f"{text[:60]}...{text[-90:]}"
