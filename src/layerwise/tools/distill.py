"""``layerwise.distill``: train a small student from a trained teacher run (Hinton et al., 2015).

The student trains on the teacher run's own data (same source, splits and preprocessing), with any
model family that accepts those inputs, through the one training loop (:func:`layerwise.train`)
with the :class:`~layerwise.tasks.distillation.Distillation` task. Unless ``baseline=False`` the same
student config is first trained alone (same seed, plain classification), so the distilled run's
``metrics.json`` and report compare teacher, student alone and distilled student.

>>> run = layerwise.distill("runs/mnist-teacher-20261122-101500", "student.yaml", temperature=4, alpha=0.9)  # doctest: +SKIP
>>> run.metrics["distillation"]["rows"]                                                               # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from ..core.config import ExperimentConfig, parse_override
from ..core.errors import ConfigError
from ..runs.config import _read_raw, load_config
from ..runs.run import Run, load_run
from ..runs.training import _write_json, train
from ..runs.tools import ToolOptions, option, register_tool
from ..tasks import TASKS
from ..tasks.classification import Classification
from ..tasks.distillation import TeacherCallback, count_errors

__all__ = ["distill"]


def _student_config(teacher: Run, student_config: Any, extra: Mapping[str, Any]) -> ExperimentConfig:
    """The student's config on the teacher's data; a different data section is refused with one line."""
    if isinstance(student_config, ExperimentConfig):
        raw: dict[str, Any] = student_config.to_dict()
    else:
        raw = copy.deepcopy(dict(_read_raw(student_config) or {}))
    teacher_data = teacher.config.data.model_dump(mode="json")
    raw.setdefault("data", teacher_data)
    task = raw.get("task")
    name = task.get("name") if isinstance(task, Mapping) else task
    if name not in (None, "classification", "distillation"):
        raise ConfigError(f"task: a distilled student is a classifier; remove task '{name}' from the "
                          f"student config")
    # the student's classifier options carry over (a resolved config lists the unset ones as null)
    options = {k: v for k, v in task.items() if k != "name" and v is not None} if isinstance(task, Mapping) else {}
    raw["task"] = {"name": "distillation", **options}
    raw.setdefault("name", f"{teacher.config.name}-student")
    cfg = load_config(raw, dict(extra) or None)
    if cfg.data.model_dump(mode="json") != teacher_data:
        differs = sorted(k for k, v in cfg.data.model_dump(mode="json").items() if teacher_data.get(k) != v)
        raise ConfigError(f"data: the student must train on the teacher run's data (same splits and preprocessing), "
                          f"but data.{', data.'.join(differs)} differ from {teacher.path}/config.yaml; remove the "
                          f"data section from the student config")
    return cfg


def _row(role: str, run: Run | None, metrics: dict[str, Any], family: str, parameters: int) -> dict[str, Any]:
    errors = count_errors(metrics)
    cm = metrics.get("details", {}).get("confusion_matrix")
    return {"role": role, "run": None if run is None else str(run.path), "family": family, "parameters": parameters,
            "accuracy": metrics.get("metrics", {}).get("accuracy"), "errors": errors,
            "samples": None if cm is None else int(sum(map(sum, cm)))}


def _teacher_metrics(teacher: Run, split: str) -> dict[str, Any]:
    """The teacher's scores on ``split``: its metrics.json when it scored that split, else a fresh evaluation."""
    metrics = teacher.metrics
    if metrics.get("split") == split and "confusion_matrix" in metrics.get("details", {}):
        return metrics
    result = teacher.evaluate(split=split)
    return {"split": split, "metrics": dict(result), "details": result.details}


class DistillOptions(ToolOptions):
    # extra keyword arguments are config overrides, as in layerwise.train (train__epochs=3)
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True, protected_namespaces=())

    student_config: Any = option(..., "the student's config: a YAML path, dict or ExperimentConfig",
                                 argument=True, metavar="STUDENT_CONFIG")
    temperature: float = option(4.0, "softens both models' probabilities")
    alpha: float = option(0.9, "weight of the soft-target term (0: plain cross-entropy on the labels)")
    baseline: bool = option(True, "also train the student alone for comparison; --no-baseline skips it",
                            flag="--no-baseline")
    runs_dir: Path = option(Path("runs"), "where the student runs are written")
    overrides: list[str] | None = option(None, "override a config key, e.g. --set train.epochs=3 (repeatable)",
                                         flag="--set", metavar="KEY=VALUE")
    quiet: bool = option(False, "no progress output")


@register_tool("distill", DistillOptions, metavar="TEACHER_RUN")
def distill(teacher: str | Path | Run, options: DistillOptions) -> Run:
    """Distil a trained classification TEACHER_RUN into a student from STUDENT_CONFIG (Hinton et al., 2015).

    The student is built from ``student_config``.

    ``student_config``: a YAML path, dict or config whose ``data`` section is absent (the teacher's is
    used) or equal to the teacher's; its ``model`` section is free. ``temperature`` softens both
    models' probabilities, ``alpha`` weighs the soft term (0: plain cross-entropy). Keyword overrides
    work as in :func:`layerwise.train` (``train__epochs=3``). Returns the distilled :class:`Run`.
    """
    student_config, temperature, alpha, baseline, runs_dir, overrides, quiet = (
        options.student_config, options.temperature, options.alpha, options.baseline, options.runs_dir,
        options.overrides, options.quiet)
    kwargs = dict(options.model_extra or {})
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature: must be a number > 0 (Hinton et al. use 2-20); received {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ConfigError(f"--alpha: the weight of the soft-target term must be in [0, 1]; received {alpha!r}")
    teacher_run = teacher if isinstance(teacher, Run) else load_run(teacher)
    task_cls = TASKS.get(teacher_run.config.task)
    if not issubclass(task_cls, Classification):
        raise ConfigError(f"{teacher_run.path}: the teacher is a '{teacher_run.config.task}' run; distillation needs "
                          f"a classification teacher (its soft class probabilities are the targets)")
    extra = dict(kwargs)
    if overrides:
        extra.update(dict(parse_override(o) for o in overrides))
    cfg = _student_config(teacher_run, student_config, extra)
    teacher_model = teacher_run.load_model()  # a copy of its own: freezing it leaves teacher_run.model alone

    alone = None
    if baseline:
        alone = train(cfg.model_copy(update={"task": "classification", "name": f"{cfg.name}-alone"}),
                      runs_dir=runs_dir, quiet=quiet)
    run = train(cfg, runs_dir=runs_dir, quiet=quiet, callbacks=[TeacherCallback(teacher_model, temperature, alpha)])

    metrics = run.metrics
    split = metrics["split"]
    rows = [_row("teacher", teacher_run, _teacher_metrics(teacher_run, split), teacher_run.config.model.family,
                 sum(p.numel() for p in teacher_model.parameters()))]
    if alone is not None:
        rows.append(_row("student alone", alone, alone.metrics, alone.config.model.family,
                         alone.metrics["training"]["parameters"]))
    rows.append(_row("distilled student", run, metrics, run.config.model.family, metrics["training"]["parameters"]))
    metrics["distillation"] = {"teacher": str(teacher_run.path), "temperature": float(temperature),
                               "alpha": float(alpha), "split": split, "rows": rows}
    _write_json(run.path / "metrics.json", metrics)
    run.report()
    return run


@distill.printer
def _print(run: Run, options: DistillOptions) -> None:
    from ..core.console import rows_table

    rows = [{"model": row["role"], "family": row["family"], "parameters": f"{row['parameters']:,}",
             "accuracy": row["accuracy"],
             "errors": "-" if row["errors"] is None else f"{row['errors']} / {row['samples']}"}
            for row in run.metrics["distillation"]["rows"]]
    rows_table(f"distillation, T={options.temperature:g}, alpha={options.alpha:g} ({run.metrics['split']} split)",
               rows, left=("model", "family"))
    print(f"run:    {run.path}")
    print(f"report: {run.path / 'report.html'}")
