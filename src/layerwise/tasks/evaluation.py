"""Evaluation that streams over batches: memory stays flat however large the data set.

Metrics come from torchmetrics, whose states are running sums (a confusion matrix, binned ROC
counts), never the list of every logit.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

__all__ = ["ClassificationEvaluator", "RegressionEvaluator", "evaluate_model", "EvalResult"]


class EvalResult(dict):
    """Scalar metrics (a dict) with ``details``: confusion matrix, per-class report, misclassified."""

    def __init__(self, metrics: dict[str, float], details: dict[str, Any] | None = None):
        super().__init__(metrics)
        self.details = details or {}


class ClassificationEvaluator:
    """Accuracy, precision/recall/F1 (macro, weighted, per class), confusion matrix, ROC-AUC."""

    def __init__(self, num_classes: int, auc_thresholds: int = 200):
        from torchmetrics import MetricCollection
        from torchmetrics import classification as C

        self.num_classes = n = num_classes
        self.labels = MetricCollection({
            "accuracy": C.MulticlassAccuracy(n, average="micro"),
            "balanced_accuracy": C.MulticlassRecall(n, average="macro"),
            **{f"{name}_{avg}": cls(n, average=avg, zero_division=0)
               for name, cls in (("precision", C.MulticlassPrecision), ("recall", C.MulticlassRecall),
                                 ("f1", C.MulticlassF1Score))
               for avg in ("macro", "weighted", "none")},
            "confusion_matrix": C.MulticlassConfusionMatrix(n),
        })
        # binned AUROC keeps (thresholds x classes) counters instead of every score
        if n == 2:
            self.auroc = C.BinaryAUROC(thresholds=auc_thresholds)
        else:
            # per class, averaged below over the classes the data holds (absent ones have no curve)
            self.auroc = C.MulticlassAUROC(n, average=None, thresholds=auc_thresholds)

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        proba = torch.softmax(outputs.detach().float(), dim=1).cpu()
        y = y.cpu()
        self.labels.update(proba.argmax(1), y)
        self.auroc.update(proba[:, 1] if self.num_classes == 2 else proba, y)

    def compute(self, class_names: list[str] | None = None) -> EvalResult:
        values = self.labels.compute()
        cm = values.pop("confusion_matrix")  # (true, predicted)
        per_class_values = {k[: -len("_none")]: values.pop(k) for k in list(values) if k.endswith("_none")}
        metrics = {k: float(v) for k, v in values.items()}
        support = cm.sum(1)
        # one-vs-rest AUC exists for a class only when the data has both its positives and negatives
        scorable = (support > 0) & (support < support.sum())
        if int(scorable.sum()) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchmetrics warns about the absent classes we skip
                auc = self.auroc.compute()
            auc = float(auc) if auc.ndim == 0 else float(auc[scorable].mean())
            if math.isfinite(auc):
                metrics["roc_auc"] = auc
        names = class_names or [str(i) for i in range(self.num_classes)]
        per_class = [
            {"class": names[i], **{k: float(per_class_values[k][i]) for k in ("precision", "recall", "f1")},
             "support": int(support[i])}
            for i in range(self.num_classes)
        ]
        return EvalResult(metrics, {"confusion_matrix": cm.long().tolist(), "per_class": per_class, "classes": names})


class RegressionEvaluator:
    """MAE, MSE, RMSE and R² on the original scale of the targets."""

    def __init__(self, num_targets: int, scaler):
        from torchmetrics import MeanAbsoluteError, MeanSquaredError, R2Score

        self.scaler = scaler
        self.mae = MeanAbsoluteError()
        self.mse = MeanSquaredError()
        self.r2 = R2Score(multioutput="uniform_average") if num_targets > 1 else R2Score()
        self.num_targets = num_targets

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        pred = self.scaler.inverse(outputs.detach().float()).cpu()
        true = self.scaler.inverse(y.reshape(outputs.shape).float()).cpu()
        if self.num_targets == 1:
            pred, true = pred.squeeze(1), true.squeeze(1)
        self.mae.update(pred, true)
        self.mse.update(pred, true)
        self.r2.update(pred, true)

    def compute(self, class_names=None) -> EvalResult:
        mse = float(self.mse.compute())
        return EvalResult({"mae": float(self.mae.compute()), "mse": mse, "rmse": math.sqrt(mse),
                           "r2": float(self.r2.compute())})


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, task, loader, eval_cfg, *, keep_misclassified: int = 0,
                   precision: str = "fp32", final: bool = False) -> EvalResult:
    """Score ``model`` on every batch of ``loader``; returns the metrics and the mean loss.

    ``final``: the evaluation of a finished model (not a validation pass during training), which
    adds the task's costlier metrics (:meth:`Task.final_metrics`, e.g. a VAE's importance-weighted bound).

    With ``keep_misclassified`` > 0 (classification), the first few misclassified inputs are kept
    for the report: a fixed-size buffer, not the whole data set.
    """
    from ..core.device import autocast_context

    was_training = model.training
    model.eval()
    evaluator = task.evaluator(eval_cfg)
    loss_sum, count = 0.0, 0.0
    wrong: list[dict[str, Any]] = []
    seen = 0
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    with autocast_context(device, precision):
        for x, y in loader:
            out = task.evaluation_step(model, (x, y))
            loss_sum += float(out.loss) * float(out.count)
            count += float(out.count)
            evaluator.update(out.outputs, y, x)  # x: for metrics against baselines made from the inputs
            if keep_misclassified and len(wrong) < keep_misclassified and task.target == "class" and task.predicts_target:
                pred = out.outputs.argmax(1)
                for i in torch.nonzero(pred != y).flatten().tolist():
                    if len(wrong) >= keep_misclassified:
                        break
                    wrong.append({"index": seen + i, "true": int(y[i]), "pred": int(pred[i])})
            seen += len(y)
    result = evaluator.compute(task.spec.class_names)
    if final:
        extra = task.final_metrics(model, loader, eval_cfg)
        result.update(extra)
        result.details.update(getattr(extra, "details", {}))  # an EvalResult's details too (a continual accuracy matrix)
    model.train(was_training)
    result["loss"] = loss_sum / max(count, 1e-12)
    if wrong:
        result.details["misclassified"] = wrong
    return result
