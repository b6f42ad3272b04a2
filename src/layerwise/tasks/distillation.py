"""Knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

A student classifier learns from a frozen teacher's softened class probabilities as well as from the
labels::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The T^2 keeps the soft term's gradients on the same scale as the hard term's when T changes. The
teacher runs inside ``training_step`` under ``torch.no_grad`` on the very batch the student sees
(same preprocessing, same augmentation), in eval mode, so it is never updated. Evaluation and
prediction are plain classification: a distilled run loads and scores like any classifier.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..core.callback import Callback
from ..core.errors import ConfigError, RunError
from ..core.sections import html_table, register_section
from . import StepOutput, ensemble_loss, register_task
from .classification import Classification, ClassifierOptions

__all__ = ["Distillation", "DistillationConfig", "TeacherCallback", "count_errors", "distillation_loss"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None, y: torch.Tensor, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al.'s loss on (B, C) logits; ``alpha = 0`` is exactly ``F.cross_entropy``.

    >>> s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    >>> bool(distillation_loss(s, t, y, 4.0, 0.0) == F.cross_entropy(s, y))
    True
    """
    student = student.float()
    hard = None if alpha == 1 else F.cross_entropy(student, y, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    # KL(p_teacher || p_student) per sample, averaged over the batch ("batchmean" is the true KL mean)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher.float() / temperature, dim=1),
                    reduction="batchmean", log_target=True) * (temperature * temperature)
    if hard is None:
        return soft
    return alpha * soft + (1 - alpha) * hard


class DistillationConfig(ClassifierOptions):
    """``task: {name: distillation, ...}``: a classifier's options but ``class_weight`` (soft targets take no
    class weights). The temperature and alpha are the teacher's settings (``layerwise distill``)."""


@register_task("distillation")
class Distillation(Classification):
    """Classification trained on a teacher's soft targets; the teacher is attached by :class:`TeacherCallback`."""

    Config = DistillationConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        self.teacher: torch.nn.Module | None = None
        self.temperature = 4.0
        self.alpha = 0.9

    def attach_teacher(self, teacher: torch.nn.Module, temperature: float, alpha: float,
                       device: torch.device) -> None:
        """Freeze ``teacher`` (eval mode, no gradients) on ``device`` and use it in every training step."""
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)

    def training_step(self, model, batch, ctx) -> StepOutput:
        if self.teacher is None:
            raise RunError("this run is a distillation run: it trains only with its teacher attached; run "
                           "`layerwise distill TEACHER_RUN STUDENT_CONFIG` again rather than resuming it")
        x, y = batch
        outputs = model(x)
        teacher_logits = None
        if self.alpha > 0:  # alpha = 0 is plain cross-entropy: the teacher's forward would be wasted
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        if outputs.dim() == 3:  # a student ensemble (B, k, C): every member learns from the teacher and the labels
            k = outputs.shape[1]
            teacher = None if teacher_logits is None else teacher_logits.repeat_interleave(k, dim=0)

            def member_loss(student: torch.Tensor, labels: torch.Tensor):
                return distillation_loss(student, teacher, labels, self.temperature, self.alpha,
                                         self.label_smoothing), labels.shape[0]

            loss, count, outputs = ensemble_loss(member_loss, outputs, y, "class")
            return StepOutput(loss, count, outputs, self.batch_sums(outputs, y))
        loss = distillation_loss(outputs, teacher_logits, y, self.temperature, self.alpha, self.label_smoothing)
        return StepOutput(loss, y.shape[0], outputs, self.batch_sums(outputs, y))


class TeacherCallback(Callback):
    """Hand the frozen teacher to the :class:`Distillation` task when fitting starts (on the loop's device)."""

    def __init__(self, teacher: torch.nn.Module, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def on_fit_start(self, trainer) -> None:
        if not isinstance(trainer.task, Distillation):
            raise ConfigError(f"task: a teacher needs the 'distillation' task; got '{trainer.task.name}'")
        trainer.task.attach_teacher(self.teacher, self.temperature, self.alpha, trainer.device)


def count_errors(metrics: dict[str, Any]) -> int | None:
    """Misclassified examples of the scored split, from a run's metrics.json (its confusion matrix)."""
    cm = metrics.get("details", {}).get("confusion_matrix")
    if cm is None:
        return None
    return int(sum(map(sum, cm)) - sum(cm[i][i] for i in range(len(cm))))


@register_section("distillation")
def _distillation_section(run):
    """The report's "Distillation" section: teacher, student alone and distilled student side by side."""
    import html

    info = run.metrics.get("distillation")
    if not info:
        return None
    rows = [{"model": r["role"], "run": r.get("run") or "-", "family": r["family"], "parameters": r["parameters"],
             "accuracy": r["accuracy"], "errors": r["errors"], "of": r["samples"]} for r in info["rows"]]
    text = (f"<p>Hinton et al. (2015): loss = &alpha; T&sup2; KL(teacher&#8214;student) + (1 - &alpha;) CE, "
            f"with T = {info['temperature']:g} and &alpha; = {info['alpha']:g}; teacher "
            f"<code>{html.escape(str(info['teacher']))}</code>; scored on the {html.escape(info['split'])} split.</p>")
    return "Distillation", text + html_table(rows)
