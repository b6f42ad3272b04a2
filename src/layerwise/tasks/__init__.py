"""Tasks: what a model's outputs mean, the loss that trains them, the step the loop runs, and the
metrics that score them.

The training loop knows nothing of losses: it calls ``task.training_step`` and, for tasks with
``manual_optimization = False`` (the default), does the backward pass and optimizer step itself.
Tasks with their own optimization logic (a GAN's two optimizers, for instance) set
``manual_optimization = True``, declare their optimizers in ``configure_optimizers`` and drive them
through the :class:`StepContext` the loop hands them, keeping accumulation, clipping, precision
and checkpointing in the one loop.

A task with options declares them as its ``Config`` (a :class:`~layerwise.core.config.TaskConfig`
whose field descriptions are the docs), written ``task: {name: classification, label_smoothing: 0.1}``
and validated with the rest of the config; the task reads them as ``self.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..core.config import TaskConfig
from ..core.registry import Registry, import_submodules

if TYPE_CHECKING:
    from ..train.trainer import StepContext

__all__ = ["TASKS", "Task", "StepOutput", "register_task", "infer_task", "metric_mode", "ensemble_loss"]

TASKS: Registry[type["Task"]] = Registry("task", key="task")


@dataclass
class StepOutput:
    """What a training or evaluation step returns.

    ``loss`` is the batch's *mean* loss and ``count`` what it averages over (samples, or total class
    weight). With gradient accumulation the loop back-propagates ``loss * count`` and divides the
    summed gradients by the window's total count, so it gets exactly the large-batch gradient even
    when micro-batches differ in size (averaging the micro-batch means would not).
    """

    loss: torch.Tensor
    count: torch.Tensor | float
    outputs: torch.Tensor | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # per-batch sums, e.g. correct predictions


class Task:
    """Base class: a loss, a step, predictions and metrics for one kind of target."""

    target: ClassVar[str | None] = "class"  # the data target it needs: "class", "numeric", "token"; None: any
    # False for generative tasks: their outputs (reconstruction errors, noise estimates) are not
    # predictions of the data's labels, so class-only machinery (the misclassified grid,
    # adversarial training) leaves them alone
    predicts_target: ClassVar[bool] = True
    manual_optimization: ClassVar[bool] = False
    main_metric: ClassVar[str] = "loss"  # shown beside the loss in progress and history
    greater_is_better: ClassVar[dict[str, bool]] = {}
    # model settings this task implies, for every family whose config has the key, applied when the
    # user did not set it (a language model's transformer is causal); an explicit contrary value stays
    # and the task's check_model says why it cannot work
    model_defaults: ClassVar[dict[str, Any]] = {}
    # the anomaly-score ability: the key of predict_batch that says how unusual an input is (None: not
    # a scorer); `layerwise anomaly` and the report's anomaly section accept exactly these tasks
    anomaly_score: ClassVar[str | None] = None
    Config: ClassVar[type[TaskConfig]] = TaskConfig  # the task's options (the keys beside `name` in `task:`)

    def __init__(self, spec, train_cfg, preprocessing, train_labels: torch.Tensor | None = None,
                 config: TaskConfig | None = None):
        self.spec = spec
        self.train_cfg = train_cfg
        self.preprocessing = preprocessing
        self.config = config if config is not None else type(self).Config()

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse, with one line, a model this task cannot train (called before any file is written)."""

    def extend_model(self, model: torch.nn.Module) -> None:
        """Add the modules this task trains beside the model (a self-supervised task's projection head or
        decoder) as ``model.pretext``, so that the optimizer, checkpoints, resume and the saved weights
        hold them like any layer. Called on the built model in training and before loading a run's
        weights; ``model.forward`` and ``forward_features`` stay the family's."""

    # -- optimization -------------------------------------------------------------------------
    def configure_optimizers(self, model: torch.nn.Module) -> dict[str, Any]:
        """Optimizers by name: a parameter list each, or ``{"params": [...], "lr": 2e-4, ...}``
        overriding keys of the train config (optimizer, lr, betas, weight_decay). One optimizer,
        'main', unless a task needs more (a GAN: 'generator' and 'discriminator')."""
        return {"main": [p for p in model.parameters() if p.requires_grad]}

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        raise NotImplementedError

    def training_step(self, model: torch.nn.Module, batch: tuple, ctx: "StepContext") -> StepOutput:
        """Forward, loss and training sums. An ensemble's (B, k, outputs) trains every member on its
        own loss (:func:`ensemble_loss`); its metrics read the members combined."""
        x, y = batch
        outputs = model(x)
        if outputs.dim() == 3:  # k ensemble members (the contract of layerwise.models)
            loss, count, outputs = ensemble_loss(self.loss, outputs, y, self.spec.target)
        else:
            loss, count = self.loss(outputs, y)
        return StepOutput(loss, count, outputs, self.batch_sums(outputs, y))

    def evaluation_step(self, model: torch.nn.Module, batch: tuple) -> StepOutput:
        """Forward and loss, no training-only sums (runs under ``torch.no_grad``)."""
        x, y = batch
        outputs = model(x)
        loss, count = self.loss(outputs, y)
        return StepOutput(loss, count, outputs)

    def batch_sums(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def summarize(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Turn sums accumulated over an epoch into metrics (means by default)."""
        return {k: v / max(count, 1e-12) for k, v in sums.items()}

    def loader(self, split, name: str, cfg, transform, device) -> Any:
        """The batches of ``split`` (``name``: train, val, test, or external for other labelled data)
        when this task draws them its own way (a few-shot task's episodes); None: the usual batches."""
        return None

    def callbacks(self, run_dir) -> list:
        """Callbacks this task adds to a training run (a language model's sample text per epoch)."""
        return []

    # -- inference ----------------------------------------------------------------------------
    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluator(self, eval_cfg) -> Any:
        """A streaming metric accumulator: ``update(outputs, y, x)``, ``compute(class_names) -> EvalResult``."""
        raise NotImplementedError

    def final_metrics(self, model: torch.nn.Module, loader, eval_cfg) -> dict[str, float]:
        """Metrics too costly for every validation pass, added to a finished model's evaluation."""
        return {}



def ensemble_loss(loss_fn, outputs: torch.Tensor, y: torch.Tensor, target: str):
    """The loss of k ensemble members' training outputs (B, k, O): ``loss_fn`` over the flattened
    (B * k, O) outputs against ``y`` repeated k times, so each member learns from its own loss and
    the loss is their mean. Returns (loss, count, combined): the count divided by k, so an epoch's
    logged loss stays a mean per sample, and the members' combined (B, O) prediction for metrics."""
    from ..models import combine_members

    k = outputs.shape[1]
    loss, count = loss_fn(outputs.flatten(0, 1), y.repeat_interleave(k, dim=0))
    return loss, count / k, combine_members(outputs.detach(), target)


def metric_mode(name: str) -> str:
    """'max' for metrics where higher is better (in any registered task), else 'min'."""
    base = name.split("_", 1)[1] if name.startswith(("val_", "train_", "test_")) else name
    better = any(cls.greater_is_better.get(base, False) for _, cls in TASKS.items())
    return "max" if better else "min"


def register_task(name: str):
    def add(cls):
        cls.name = name
        return TASKS.register(name)(cls)

    return add


def infer_task(spec, model_cls=None, source_cls=None) -> str:
    """The task a family implies (generative families) or a source does (a time series: forecasting),
    else the one the data's target implies."""
    for cls in (model_cls, source_cls):
        implied = getattr(cls, "implies_task", None)
        if implied:
            return implied
    if spec.target == "token":
        return "language_model"
    if spec.target == "caption":  # image-text pairs
        return "clip"
    return "classification" if spec.target == "class" else "regression"


import_submodules(__name__)  # each task file registers itself
