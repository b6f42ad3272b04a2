"""Classification: cross-entropy, class probabilities, and streaming classification metrics."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.config import AdversarialConfig, TaskConfig
from ..core.errors import ConfigError
from . import Task, register_task

__all__ = ["Classification", "ClassificationConfig", "ClassifierOptions"]


class ClassifierOptions(TaskConfig):
    """Options of every task that trains a classifier on labels (classification, distillation)."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")
    adversarial_training: AdversarialConfig | None = Field(
        None, description="adversarial training (Madry et al. 2018) on continuous inputs, docs/robustness.md; off "
                          "when absent")


class ClassificationConfig(ClassifierOptions):
    """``task: {name: classification, ...}``."""

    class_weight: Literal["balanced"] | list[float] | None = Field(
        None, description="weights of the classes in the loss: 'balanced' (inverse frequency) or one per class")


@register_task("classification")
class Classification(Task):
    target = "class"
    main_metric = "accuracy"
    greater_is_better = {"accuracy": True, "f1_macro": True, "f1_weighted": True, "roc_auc": True,
                         "precision_macro": True, "recall_macro": True, "balanced_accuracy": True}
    Config = ClassificationConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        self.weight = self._class_weights(getattr(self.config, "class_weight", None), train_labels)
        self.label_smoothing = self.config.label_smoothing

    def _class_weights(self, option, labels) -> torch.Tensor | None:
        n = self.spec.num_classes
        if option is None:
            return None
        if option == "balanced":
            counts = torch.bincount(labels, minlength=n).float().clamp_(min=1)
            return counts.sum() / (n * counts)  # scikit-learn's 'balanced' weights
        if len(option) != n:
            raise ConfigError(f"task.class_weight: {len(option)} weights given for {n} classes; give one per class")
        return torch.tensor(option, dtype=torch.float32)

    def loss(self, outputs, y):
        weight = None if self.weight is None else self.weight.to(outputs.device)
        loss = F.cross_entropy(outputs.float(), y, weight=weight, label_smoothing=self.label_smoothing)
        # PyTorch's weighted mean divides by the batch's total weight: that is what it averages over
        count = weight[y].sum() if weight is not None else y.shape[0]
        return loss, count

    def batch_sums(self, outputs, y):
        return {"accuracy": (outputs.detach().argmax(1) == y).sum()}

    def predict(self, outputs):
        proba = torch.softmax(outputs.float(), dim=1)
        return {"label": proba.argmax(1), "proba": proba}

    def evaluator(self, eval_cfg):
        from .evaluation import ClassificationEvaluator

        return ClassificationEvaluator(self.spec.num_classes, eval_cfg.auc_thresholds)
