"""Anomaly detection with a trained autoencoder or VAE: inputs the model rebuilds badly are unusual.

The score is the reconstruction error (autoencoder runs, Hinton & Salakhutdinov 2006; its use for
anomalies: Sakurada & Yairi 2014) or the negative ELBO, an upper bound on -log p(x) (vae runs,
Kingma & Welling 2014; An & Cho 2015), both from the task's ``predict_batch``. The threshold is a
quantile of the scores of the run's VALIDATION split, data the model did not train on but that is
known to be normal, so a quantile of 0.99 flags about 1% of normal inputs. With labels, ROC-AUC and
PR-AUC (scikit-learn; anomalies are the positive class) say how well the score separates them.

Example::

    result = layerwise.load_run("runs/ae").anomaly("new.npz", out="scores.csv")
    result.threshold, result.metrics  # {'roc_auc': ..., 'pr_auc': ...} when the input had labels
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, DataError, RunError
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["AnomalyResult", "anomaly_scores", "check_run", "score_inputs", "score_tasks", "validation_threshold"]


def score_tasks() -> dict[str, str]:
    """Task -> the key of its predict_batch that is the anomaly score (higher = more unusual), from the
    tasks' declared ``anomaly_score``."""
    from ..tasks import TASKS

    return {name: cls.anomaly_score for name, cls in TASKS.items() if cls.anomaly_score}


@dataclass
class AnomalyResult:
    ids: list[str]
    scores: np.ndarray  # (N,) reconstruction error or -ELBO
    is_anomaly: np.ndarray  # (N,) bool: score > threshold
    threshold: float
    quantile: float
    metrics: dict[str, Any] = field(default_factory=dict)  # roc_auc, pr_auc, ... when labels were given
    path: Path | None = None


def check_run(run, verb: str = "anomaly") -> str:
    """The score key for ``run``'s task; a one-line RunError for any other kind of run."""
    task, scorers = run.config.task, score_tasks()
    if task not in scorers:
        from ..models import FAMILIES

        families = " or ".join(n for n, cls in FAMILIES.items() if getattr(cls, "implies_task", None) in scorers)
        raise RunError(f"{verb}: {run.path} is a '{task}' run; {verb} needs an {families} run "
                       f"(model.family: {families})")
    return scorers[task]


@torch.no_grad()
def score_inputs(run, x: torch.Tensor) -> np.ndarray:
    """Anomaly scores (N,) for stored inputs ``x`` (uint8 images / float features), in evaluation batches."""
    from ..data.loader import BatchLoader
    from ..data.spec import Split

    key = check_run(run)
    model = run.model.cpu().eval()  # scoring is cheap next to loading: the CPU keeps results exact
    loader = BatchLoader(Split(x, torch.zeros(len(x), dtype=torch.long)), run.config.evaluate.batch_size,
                         transform=run.preprocessing.inputs.batch, device=torch.device("cpu"))
    parts = [run.task.predict_batch(model, xb)[key].float().cpu() for xb, _ in loader]
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.float32)


def validation_threshold(run, quantile: float = 0.99) -> tuple[float, np.ndarray]:
    """The ``quantile`` of the validation split's scores, and those scores."""
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"--quantile: {quantile} must lie strictly between 0 and 1; e.g. 0.99")
    val = getattr(run.data, "val", None)
    if val is None or not len(val):
        raise RunError(f"anomaly: {run.path} has no validation split to set the threshold on; "
                       f"train with data.val_fraction > 0")
    scores = score_inputs(run, val.x)
    return float(np.quantile(scores, quantile)), scores


class _LabelsAsGiven:
    """The run seen through read_inputs, but labels are kept as given instead of encoded: anomaly
    inputs hold exactly the classes the run never trained on, which the run's encoder rejects."""

    class _Pre:
        def __init__(self, pre):
            self._pre = pre

        def __getattr__(self, name):
            return getattr(self._pre, name)

        def encode_labels(self, y, origin):
            return np.full(len(y), -1, dtype=np.int64)  # unused: scoring needs no labels

    def __init__(self, run):
        self._run = run
        self.preprocessing = self._Pre(run.preprocessing)

    def __getattr__(self, name):
        return getattr(self._run, name)


def _truth(run, source, inputs, normal: list[str] | None, labels_column: str | None) -> np.ndarray | None:
    """True anomaly flags (N,) from the input's labels, or None when it has none."""
    labels = inputs.labels
    if labels_column is not None:
        if not isinstance(source, (str, Path)) or Path(source).suffix.lower() not in {".csv", ".tsv", ".parquet", ".pq"}:
            raise ConfigError("--labels-column: only tables (.csv, .parquet) have columns; an .npz carries its "
                              "labels in 'y', a folder in its class sub-folders")
        from ..data.tabular import read_table

        frame = read_table(Path(source), getattr(run.config.data, "delimiter", ","))
        if labels_column not in frame.columns:
            raise ConfigError(f"--labels-column: '{labels_column}' is not a column of {source}; it has "
                              f"{', '.join(map(str, frame.columns[:12]))}")
        labels = frame[labels_column].to_numpy()
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    if normal:
        return np.array([str(v) not in set(normal) for v in labels.tolist()])
    if labels_column is not None or labels.dtype == bool:
        # a boolean column: true marks an anomaly
        text = np.array([str(v).strip().lower() for v in labels.tolist()])
        if not set(text) <= {"true", "false", "1", "0", "1.0", "0.0"}:
            raise ConfigError(f"--labels-column: '{labels_column}' is not boolean; name the normal classes "
                              f"with --normal CLASS ...")
        return np.isin(text, ["true", "1", "1.0"])
    # class labels without --normal: the classes the run trained on are the normal ones
    seen = {str(c) for c in run.preprocessing.classes or []}
    return np.array([str(v) not in seen for v in labels.tolist()])


def _curve_metrics(truth: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    out: dict[str, Any] = {"anomalies": int(truth.sum()), "normal": int((~truth).sum())}
    if truth.all() or not truth.any():  # one class only: the curves are undefined
        return out
    out["roc_auc"] = float(roc_auc_score(truth, scores))
    out["pr_auc"] = float(average_precision_score(truth, scores))
    out["precision"] = float((truth & flagged).sum() / max(flagged.sum(), 1))
    out["recall"] = float((truth & flagged).sum() / truth.sum())
    return out


class AnomalyOptions(ToolOptions):
    inputs: Any = option(..., "the inputs to score: any form predict reads (a file, folder, frame or array)",
                         argument=True, metavar="INPUT")
    quantile: float = option(0.99, "threshold: this quantile of the validation split's scores")
    normal: list[str] | None = option(None, "a normal class of the input's labels (repeatable; default: the "
                                      "classes the run trained on)", metavar="CLASS")
    labels_column: str | None = option(None, "a table's boolean column marking anomalies (or its classes with "
                                       "--normal)", metavar="C")
    out: Path | None = option(None, "a CSV of id, score, is_anomaly (Python: none unless given)",
                              cli_default=Path("scores.csv"))


@register_tool("anomaly", AnomalyOptions)
def anomaly_scores(run, options: AnomalyOptions) -> AnomalyResult:
    """Score INPUT for anomalies (autoencoder / vae runs) into a CSV: score, is_anomaly.

    Scores inputs (any form ``predict`` reads), flags those above the validation threshold, and
    with labels reports ROC-AUC / PR-AUC. Writes ``out`` (CSV: id, score, is_anomaly[, true label])
    and records the threshold in ``RUN/anomaly.json``."""
    source, quantile, normal, labels_column, out = (options.inputs, options.quantile, options.normal,
                                                    options.labels_column, options.out)
    score_key = check_run(run)
    from ..data.inputs import read_inputs

    threshold, val_scores = validation_threshold(run, quantile)
    inputs = read_inputs(source, _LabelsAsGiven(run))
    if not len(inputs.split):
        raise DataError(f"anomaly: {source} holds no inputs")
    scores = score_inputs(run, inputs.split.x)
    flagged = scores > threshold
    truth = _truth(run, source, inputs, [str(c) for c in normal] if normal else None, labels_column)
    metrics = {} if truth is None else _curve_metrics(truth, scores, flagged)
    result = AnomalyResult(inputs.ids, scores, flagged, threshold, quantile, metrics)
    record = {"score": score_key, "quantile": quantile, "threshold": threshold,
              "val_samples": len(val_scores), "input": str(source) if isinstance(source, (str, Path)) else None,
              "flagged": int(flagged.sum()), "samples": len(scores), "metrics": metrics}
    from ..core.io import atomic_write

    atomic_write(run.path / "anomaly.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    if out is not None:
        import pandas as pd

        frame = pd.DataFrame({"id": inputs.ids, "score": scores, "is_anomaly": flagged})
        if inputs.labels is not None:
            frame["true"] = np.asarray(inputs.labels).reshape(len(frame), -1)[:, 0]
        if truth is not None:
            frame["true_anomaly"] = truth
        result.path = Path(out)
        result.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(result.path, lambda tmp: frame.to_csv(tmp, index=False))
    return result


@anomaly_scores.printer
def _print(result: AnomalyResult, options: AnomalyOptions) -> None:
    from ..core.console import metrics_table

    print(f"threshold: {result.threshold:.6g} (quantile {options.quantile} of validation scores); "
          f"{int(result.is_anomaly.sum())} of {len(result.scores)} flagged")
    if result.metrics:
        metrics_table("anomaly detection", result.metrics)
    print(f"scores: {result.path}")
