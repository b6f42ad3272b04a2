"""The configuration reference, generated from the schemas themselves (docs/configuration.md)."""

from __future__ import annotations

import re

from pydantic import BaseModel


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`" if value is not None else "`None`"


def _type(field) -> str:
    text = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    text = re.sub(r"layerwise(\.\w+)*\.", "", text)  # schema classes by name, wherever they are defined
    # a constrained item type (list[Annotated[int, Gt(gt=0)]]) reads as its type; the description says the range
    text = re.sub(r"Annotated\[([^,\[\]]+), [^\[\]]*\]", r"\1", text)
    return text.replace("|", "\\|")


def _section(title: str, schema: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    lines = [f"### {title}", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, field in schema.model_fields.items():
        if key in skip:
            continue
        lines.append(f"| `{key}` | {_type(field)} | {_default(field)} | {field.description or ''} |")
    return lines + [""]


def config_reference() -> str:
    """Markdown tables of every section, data source and model family."""
    from ..core.config import (
        AdversarialConfig,
        AugmentConfig,
        DataConfig,
        EarlyStoppingConfig,
        EvaluateConfig,
        ExperimentConfig,
        SchedulerConfig,
        TrainConfig,
    )
    from ..data import SOURCES
    from ..models import FAMILIES
    from ..tasks import TASKS
    from ..train import OPTIMIZERS, SCHEDULERS, STRATEGIES

    out: list[str] = [
        "# Configuration reference",
        "",
        "Generated from the schemas by `layerwise config --reference`; a test keeps this file in step.",
        "Unknown keys are errors. Override any key on the command line with `--set section.key=value`.",
        "",
        "## Top level",
        "",
        "| key | meaning |",
        "| --- | --- |",
        f"| `name` | {ExperimentConfig.model_fields['name'].description} |",
        "| `data` | where the data comes from and how it is split (below) |",
        "| `model` | the model family and its hyperparameters (below) |",
        f"| `task` | one of: {', '.join(TASKS.names())}, or a mapping of `name` and the task's options "
        "(below); implied by the data and the model family when absent |",
        "| `train` | the training loop (below) |",
        "| `evaluate` | scoring after training (below) |",
        "",
        "## data",
        "",
    ]
    out += _section("keys of every source", DataConfig)
    common = set(DataConfig.model_fields)
    for name, cls in SOURCES.items():
        extra = tuple(k for k in cls.Config.model_fields if k in common)
        out += _section(f"source: {name} — {cls.description}", cls.Config, skip=extra)
    out += _section("data.augment", AugmentConfig)
    out += ["## model", ""]
    for name, cls in FAMILIES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        accepts = ", ".join(sorted(cls.accepts)) or "any"
        out += _section(f"family: {name} — {doc} (inputs: {accepts})", cls.Config, skip=("family",))
    out += ["## task", "",
            "`task: classification`, or `task: {name: classification, label_smoothing: 0.1}` with the task's options. "
            "A mapping without `name` gives options to the task the data and model family imply. Tasks without "
            "options: " + ", ".join(n for n, cls in TASKS.items() if not cls.Config.model_fields) + ".", ""]
    for name, cls in TASKS.items():
        if cls.Config.model_fields:
            out += _section(f"task: {name}", cls.Config)
    out += _section("task.adversarial_training (adversarial training, docs/robustness.md)", AdversarialConfig)
    out += ["## train", ""]
    out += [f"Optimizers: {', '.join(OPTIMIZERS.names())}. Schedulers: {', '.join(SCHEDULERS.names())}. "
            f"Strategies: {', '.join(STRATEGIES.names())}.", ""]
    out += _section("train", TrainConfig)
    out += _section("train.scheduler (a name, or a mapping with `name`)", SchedulerConfig)
    out += _section("train.early_stopping (`true` for the defaults)", EarlyStoppingConfig)
    out += ["## evaluate", ""]
    out += _section("evaluate", EvaluateConfig)
    return "\n".join(out).rstrip() + "\n"


