"""Continual learning: one classifier trained on a sequence of class-incremental experiences, scored
on how much it keeps of each.

The scenario is class-incremental (van de Ven & Tolias 2019, "Three scenarios for continual
learning"): experience ``k`` brings new classes (split-MNIST: {0, 1}, then {2, 3}, ...), one head
scores every class, and no experience id is given at test time. Plain fine-tuning (``naive``) then
forgets almost everything it learnt before: the last classes trained take over the head. Two remedies:

- ``ewc``, elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic
  forgetting in neural networks"), in its online form (Schwarz et al. 2018, "Progress & Compress"):
  after each experience, a diagonal Fisher information ``F`` is estimated on ``ewc_samples`` of its
  training samples, and training goes on under the penalty ``ewc_lambda / 2 * sum_i F_i (θ_i - θ*_i)²``
  that anchors each weight to ``θ*``, its value after the last experience, in proportion to how much
  the log-likelihood depends on it. ``F`` is the mean over samples of the squared gradient of
  ``log p(ŷ | x)``, ``ŷ`` the model's own prediction (not the label); the online form keeps one ``F``,
  ``F <- ewc_decay * F + F_new``, and one anchor, where the original keeps a penalty per experience.
- ``replay``, experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual
  Learning"): each training batch is joined by as many samples of a small class-balanced memory of
  the past experiences (``data/experiences.py``). van de Ven & Tolias 2019 find replay the only kind
  of method that holds up in the class-incremental scenario.

The score is the accuracy matrix ``A[i][j]``: the accuracy on experience ``j``'s classes (argmax
over every class) after training experience ``i``. Weights are saved at the end of each experience
(``continual/`` in the run directory), and a finished run's evaluation scores each of them on the
same split, so the matrix is on whatever split is scored (the test split after training). From it:
``average_accuracy``, the mean of the last row, and ``forgetting`` (Chaudhry et al. 2018,
"Riemannian Walk for Incremental Learning"): the mean over every experience but the last of its best
accuracy after it was learnt minus its accuracy at the end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.callback import Callback
from ..core.config import TaskConfig
from ..core.errors import ConfigError, RunError
from ..core.sections import figure_html, html_table, pyplot, register_section
from . import StepOutput, Task, register_task

__all__ = ["Continual", "ContinualConfig", "Consolidation", "class_groups", "diagonal_fisher", "ewc_penalty",
           "forgetting", "average_accuracy", "experience_accuracies"]

DEFAULT_EXPERIENCES = 5
WEIGHTS = "continual"  # the run's folder of the weights after each experience but the last


class ContinualConfig(TaskConfig):
    """``task: {name: continual, experiences: 5, method: replay, ...}``."""

    experiences: int | None = Field(None, ge=2, description="experiences trained one after another when splits is "
                                                          "absent: the class list cut in order into equal groups "
                                                          f"(default {DEFAULT_EXPERIENCES})")
    splits: list[list[str | int]] | None = Field(None, description="the class names of each experience in training "
                                                 "order, e.g. [[0, 1], [2, 3], [4, 5]]; every class in exactly one")
    epochs_per_experience: int | None = Field(None, ge=1, description="epochs each experience trains; train.epochs "
                                              "is the whole sequence's and must be experiences x this (default: "
                                              "train.epochs / experiences)")
    method: Literal["naive", "ewc", "replay"] = Field("naive", description="naive: plain fine-tuning; ewc: online "
                                                      "elastic weight consolidation; replay: each batch joined by "
                                                      "as many samples of a memory of past experiences")
    ewc_lambda: float = Field(1000.0, ge=0, description="ewc: strength of the penalty lambda/2 * sum F (w - w*)^2")
    ewc_decay: float = Field(1.0, gt=0, le=1, description="ewc: online EWC's decay of earlier experiences' Fisher "
                                                         "(gamma of Schwarz et al. 2018; 1: none)")
    ewc_samples: int = Field(500, ge=1, description="ewc: training samples of a finished experience the Fisher "
                                                    "information is estimated on")
    replay_size: int = Field(500, ge=1, description="replay: samples the class-balanced memory of past experiences "
                                                    "holds")


# -- the experiences ------------------------------------------------------------------------------------


def class_groups(names: list[str], config: ContinualConfig) -> list[list[int]]:
    """The class indices of each experience: ``splits`` checked against the data's class ``names``,
    or the classes cut in order into ``experiences`` equal groups."""
    if config.splits is None:
        count = config.experiences or DEFAULT_EXPERIENCES
        if len(names) % count:
            divisors = ", ".join(str(d) for d in range(2, len(names) + 1) if len(names) % d == 0)
            raise ConfigError(f"task.experiences: {len(names)} classes do not split into {count} equal experiences; "
                              f"choose one of {divisors}, or list the groups in task.splits")
        size = len(names) // count
        return [list(range(k * size, (k + 1) * size)) for k in range(count)]
    groups = [[str(n) for n in group] for group in config.splits]
    if len(groups) < 2:
        raise ConfigError(f"task.splits: {len(groups)} group; continual learning needs at least 2 experiences")
    if config.experiences is not None and config.experiences != len(groups):
        raise ConfigError(f"task.experiences: {config.experiences}, but task.splits has {len(groups)} groups; "
                          f"remove task.experiences (the splits decide)")
    where: dict[str, int] = {}
    for k, group in enumerate(groups, 1):
        if not group:
            raise ConfigError(f"task.splits: experience {k} has no classes; give each group at least one class")
        for name in group:
            if name not in names:
                raise ConfigError(f"task.splits: {name!r} is not a class of the data; its classes are "
                                  f"{', '.join(names)}")
            if name in where:
                raise ConfigError(f"task.splits: class {name!r} is in experiences {where[name]} and {k}; each class "
                                  f"is new in one experience (class-incremental): keep it in one group")
            where[name] = k
    missing = [n for n in names if n not in where]
    if missing:
        raise ConfigError(f"task.splits: class{'es' if len(missing) > 1 else ''} {', '.join(missing)} in no "
                          f"experience; add {'them' if len(missing) > 1 else 'it'} to a group (every class is "
                          f"learnt in one)")
    return [[names.index(n) for n in group] for group in groups]


def _epochs_per_experience(config: ContinualConfig, experiences: int, train_cfg) -> int:
    """Each experience's epochs, checked against ``train.epochs`` (the whole sequence's)."""
    epochs = getattr(train_cfg, "epochs", None)
    if epochs is None:  # a task built without a training config (a unit test)
        return config.epochs_per_experience or 1
    if config.epochs_per_experience is not None:
        if config.epochs_per_experience * experiences != epochs:
            raise ConfigError(f"task.epochs_per_experience: {config.epochs_per_experience} epochs x {experiences} "
                              f"experiences = {config.epochs_per_experience * experiences}, but train.epochs is "
                              f"{epochs}; set train.epochs: {config.epochs_per_experience * experiences} (the whole "
                              f"sequence's epochs)")
        return config.epochs_per_experience
    if epochs % experiences:
        raise ConfigError(f"train.epochs: {epochs} epochs do not split into {experiences} experiences; set a multiple "
                          f"of {experiences} (e.g. {max(1, epochs // experiences) * experiences}), or "
                          f"task.epochs_per_experience")
    return epochs // experiences


def _check_training(train_cfg) -> None:
    """Refuse what would end the sequence early: each experience trains for its epochs, and the run
    keeps the last weights (a validation score across experiences is no criterion for stopping)."""
    if train_cfg is None:
        return
    for key, value in (("early_stopping", train_cfg.early_stopping), ("max_steps", train_cfg.max_steps),
                       ("max_time", train_cfg.max_time)):
        if value is not None:
            raise ConfigError(f"train.{key}: a continual run trains every experience for its epochs and keeps the "
                              f"last weights; remove train.{key} (shorten the run with train.epochs)")


# -- elastic weight consolidation -----------------------------------------------------------------------


def diagonal_fisher(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of the trainable parameters on inputs ``x``: the mean over
    samples of the squared gradient of ``log p(ŷ | x)``, ``ŷ`` the model's own prediction.

    Per-sample gradients (the square of a batch's gradient is not the mean of squares), in eval mode
    (dropout off, batch-norm statistics fixed): vectorized with ``torch.func`` (several times faster),
    or one backward pass per sample for a model ``torch.func`` cannot trace."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    try:
        fisher = _vectorized_fisher(model, params, x)
    except RuntimeError:  # data-dependent control flow or .item() in the model's forward: vmap refuses it
        fisher = _looped_fisher(model, params, x)
    finally:
        model.train(was_training)
    return fisher


def _own_log_likelihood(logits: torch.Tensor) -> torch.Tensor:
    """log p(ŷ | x) of one sample's (1, classes) logits, ŷ its top class (gathered, not ``max()``, whose
    gradient a tie would split between the classes)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return log_p.gather(-1, log_p.argmax(-1, keepdim=True)).sum()


def _vectorized_fisher(model, params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    def log_likelihood(weights, sample):
        return _own_log_likelihood(functional_call(model, weights, (sample.unsqueeze(0),)))

    weights = {n: p.detach() for n, p in params.items()}
    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0))
    # a chunk's gradients are (chunk, *shape) for every parameter: about 32M numbers at a time
    chunk = max(1, min(64, 2**25 // max(1, sum(p.numel() for p in params.values()))))
    fisher = {n: torch.zeros_like(p) for n, p in weights.items()}
    for start in range(0, len(x), chunk):
        for name, g in per_sample(weights, x[start:start + chunk]).items():
            fisher[name] += g.pow(2).sum(0)
    return {n: f / max(len(x), 1) for n, f in fisher.items()}


def _looped_fisher(model, params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.enable_grad():
        for i in range(len(x)):
            grads = torch.autograd.grad(_own_log_likelihood(model(x[i:i + 1])), list(params.values()),
                                        allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    fisher[name] += g.detach() ** 2
    return {n: f / max(len(x), 1) for n, f in fisher.items()}


def ewc_penalty(model: torch.nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
                strength: float) -> torch.Tensor:
    """``strength / 2 * sum_i F_i (θ_i - θ*_i)²`` over the parameters ``fisher`` names: zero at the anchor.

    >>> layer = torch.nn.Linear(1, 1, bias=False)
    >>> anchor = {"weight": layer.weight.detach() - 3}
    >>> ewc_penalty(layer, {"weight": torch.ones(1, 1)}, anchor, strength=2.0).item()    # 2 / 2 * 1 * 3²
    9.0
    """
    terms = [(fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in fisher]
    return strength / 2 * torch.stack(terms).sum() if terms else torch.zeros(())


class Consolidation(Callback):
    """What a continual run carries from one experience to the next, saved in every checkpoint (so a
    resume continues exactly): EWC's Fisher and anchor weights. At the end of each experience but the
    last it also writes the weights to ``continual/after-experience-K.safetensors`` in the run, which
    a finished run's evaluation scores for the accuracy matrix."""

    def __init__(self, task: "Continual"):
        self.task = task
        self.run_dir: Path | None = None
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | None:
        if not self.fisher:
            return None  # the first experience: nothing to keep yet
        return ewc_penalty(model, self.fisher, self.anchor, self.task.config.ewc_lambda)

    def on_fit_start(self, trainer) -> None:
        if self.task.experience_loader is None:
            raise ConfigError("task continual: this fit draws ordinary batches, not experiences (a tabular run choosing "
                              "its family among several); name one with model.family")
        # a resumed state comes from the checkpoint on the CPU; the penalty runs every step, on the model's device
        self.fisher = {n: f.to(trainer.device) for n, f in self.fisher.items()}
        self.anchor = {n: a.to(trainer.device) for n, a in self.anchor.items()}

    def on_epoch_end(self, trainer, logs) -> None:
        per = self.task.epochs_per_experience
        if trainer.epoch % per:
            return  # mid-experience
        k, last = trainer.epoch // per - 1, len(self.task.groups) - 1
        if k >= last:
            return  # the final weights are the run's model
        if self.task.config.method == "ewc":
            c = self.task.config
            x, _ = self.task.experience_loader.samples(k, c.ewc_samples, seed=trainer.cfg.seed)
            new = diagonal_fisher(trainer.model, x)
            self.fisher = {n: c.ewc_decay * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
            self.anchor = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in new}
        if self.run_dir is not None:
            save_weights(trainer.model, self.run_dir / WEIGHTS / f"after-experience-{k + 1}.safetensors")

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor,
                "epochs_per_experience": self.task.epochs_per_experience}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        before = state.get("epochs_per_experience", self.task.epochs_per_experience)
        if before != self.task.epochs_per_experience:
            raise ConfigError(f"train.epochs: the run trains {before} epochs per experience, {self.task.epochs_per_experience} "
                              f"now; a continual run's length cannot change when it resumes: resume without it")
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The weights as a finished run's model has them (LoRA adapters folded in), as safetensors."""
    from safetensors.torch import save_file

    from ..core.io import atomic_write
    from ..models.lora import merge_lora

    merged = merge_lora(copy.deepcopy(model)) if any("lora_" in n for n, _ in model.named_parameters()) else model
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in merged.state_dict().items()}  # clone: no aliasing
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


# -- scores ---------------------------------------------------------------------------------------------


@torch.no_grad()
def experience_accuracies(model: torch.nn.Module, loader, groups: list[list[int]], classes: int) -> list[float]:
    """The accuracy on each experience's samples in ``loader`` (argmax over every class: no experience
    id at test time); NaN for an experience without samples there."""
    correct, seen = torch.zeros(classes), torch.zeros(classes)
    was_training = model.training
    model.eval()
    for x, y in loader:
        right = (model(x).argmax(-1) == y).float().cpu()
        y = y.cpu()
        correct.index_add_(0, y, right)
        seen.index_add_(0, y, torch.ones_like(right))
    model.train(was_training)
    return [float(correct[g].sum() / seen[g].sum()) if seen[g].sum() else float("nan") for g in groups]


def average_accuracy(matrix: list[list[float]]) -> float:
    """The mean accuracy over experiences after the last one: the mean of the last row."""
    return float(np.nanmean(matrix[-1]))


def forgetting(matrix: list[list[float]]) -> float:
    """Chaudhry et al. 2018: the mean over every experience ``j`` but the last of
    ``max_{j <= i < last} A[i][j] - A[last][j]``, its best accuracy once learnt minus its final one."""
    a = np.asarray(matrix, dtype=float)
    last = len(a) - 1
    return float(np.nanmean([a[j:last, j].max() - a[last, j] for j in range(last)]))


# -- the task -------------------------------------------------------------------------------------------


@register_task("continual")
class Continual(Task):
    target = "class"
    main_metric = "accuracy"
    greater_is_better = {"accuracy": True, "average_accuracy": True, "forgetting": False}
    Config = ContinualConfig
    run_dir: Path | None = None  # set by the Run that loads the task: where the weights after each experience are

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        self.names = [str(n) for n in spec.class_names]
        self.groups = class_groups(self.names, self.config)
        self.epochs_per_experience = _epochs_per_experience(self.config, len(self.groups), train_cfg)
        _check_training(train_cfg)
        replayed = sum(len(g) for g in self.groups[:-1])
        if self.config.method == "replay" and self.config.replay_size < replayed:
            raise ConfigError(f"task.replay_size: {self.config.replay_size} samples cannot hold one of each of the "
                              f"{replayed} classes the last experience replays; give at least {replayed} (hundreds "
                              f"are usual)")
        self.consolidation = Consolidation(self)
        self.experience_loader = None  # the training batches, once the run asks for them

    # -- batches --------------------------------------------------------------------------------------
    def loader(self, split, name: str, cfg, transform, device):
        """The training split as experiences (with replay, for method replay); every other split whole:
        the loop's ``val_accuracy`` is over every class, those not trained yet too."""
        from ..data.experiences import ExperienceLoader
        from ..data.loader import BatchLoader

        if name != "train":
            return BatchLoader(split, cfg.evaluate.batch_size, transform=transform, device=device)
        replay = self.config.replay_size if self.config.method == "replay" else 0
        self.experience_loader = ExperienceLoader(split, self.groups, self.epochs_per_experience, cfg.train.batch_size,
                                                  replay_size=replay, seed=cfg.train.seed, transform=transform,
                                                  device=device, names=self.names)
        return self.experience_loader

    def callbacks(self, run_dir) -> list:
        self.consolidation.run_dir = Path(run_dir)
        return [self.consolidation]

    # -- steps ----------------------------------------------------------------------------------------
    def loss(self, outputs, y):
        return F.cross_entropy(outputs.float(), y), y.shape[0]

    def batch_sums(self, outputs, y):
        return {"accuracy": (outputs.detach().argmax(1) == y).sum()}

    def training_step(self, model, batch, ctx) -> StepOutput:
        out = super().training_step(model, batch, ctx)
        penalty = self.consolidation.penalty(model) if self.config.method == "ewc" else None
        if penalty is not None:
            out.loss = out.loss + penalty
            out.sums["ewc_penalty"] = penalty.detach() * out.count  # logged as the epoch's mean penalty
        return out

    def predict(self, outputs):
        proba = torch.softmax(outputs.float(), dim=1)
        return {"label": proba.argmax(1), "proba": proba}

    def evaluator(self, eval_cfg):
        from .evaluation import ClassificationEvaluator

        return ClassificationEvaluator(self.spec.num_classes, eval_cfg.auc_thresholds)

    # -- the accuracy matrix --------------------------------------------------------------------------
    def final_metrics(self, model, loader, eval_cfg):
        """The accuracy matrix on the scored split, from the weights after each experience, with
        ``average_accuracy`` and ``forgetting``; only its last row (the finished model) when the run's
        weights after the earlier experiences are not at hand (a cross-validation fold)."""
        from .evaluation import EvalResult

        classes = self.spec.num_classes
        earlier = [experience_accuracies(m, loader, self.groups, classes) for m in self._earlier_models(model)]
        matrix = [*earlier, experience_accuracies(model, loader, self.groups, classes)]
        metrics = {"average_accuracy": average_accuracy(matrix)}
        if len(matrix) == len(self.groups):
            metrics["forgetting"] = forgetting(matrix)
        return EvalResult(metrics, {"accuracy_matrix": matrix,
                                    "experiences": [[self.names[c] for c in g] for g in self.groups]})

    def _earlier_models(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The model with the weights after each experience but the last, when the run has them all."""
        if self.run_dir is None:
            return []
        paths = [Path(self.run_dir) / WEIGHTS / f"after-experience-{k}.safetensors" for k in range(1, len(self.groups))]
        if not all(p.is_file() for p in paths):
            return []
        from safetensors.torch import load_file

        models = []
        for path in paths:
            earlier = copy.deepcopy(model)
            try:
                earlier.load_state_dict(load_file(path, device=str(next(model.parameters()).device)))
            except Exception as exc:  # damaged, or another model's: the one file named, the rest of the run stands
                raise RunError(f"{path}: unreadable or not this model's weights ({type(exc).__name__}); delete the "
                               f"folder {path.parent} to score the run without its accuracy matrix") from exc
            models.append(earlier)
        return models


# -- the report -----------------------------------------------------------------------------------------


@register_section("continual")
def continual_section(run) -> tuple[str, str] | None:
    """The report's "Continual learning": the accuracy matrix as a heatmap, and its summary."""
    if run.config.task != "continual":
        return None
    details, metrics = run.metrics.get("details", {}), run.metrics.get("metrics", {})
    matrix = details.get("accuracy_matrix")
    if not matrix:
        return None
    a = np.asarray(matrix, dtype=float)
    groups = details.get("experiences") or [[] for _ in range(a.shape[1])]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * a.shape[1] + 2.4, 0.8 * a.shape[0] + 1.6))
    image = ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, "–" if np.isnan(a[i, j]) else f"{a[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if a[i, j] >= 0.6 else "white")
    ax.set_xticks(range(a.shape[1]), [f"{j + 1}\n{', '.join(g)}" for j, g in enumerate(groups)], fontsize=8)
    first = a.shape[1] - a.shape[0] + 1  # a matrix of the last row only (weights missing) starts at the end
    ax.set_yticks(range(a.shape[0]), [f"after {i}" for i in range(first, a.shape[1] + 1)], fontsize=8)
    ax.set_xlabel("accuracy on experience (its classes)")
    ax.set_ylabel("after training experience")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    options = run.config.task_options
    rows = [{"method": options.method, "accuracy (all classes)": metrics.get("accuracy"),
             "average accuracy": metrics.get("average_accuracy"), "forgetting": metrics.get("forgetting", "–")}]
    split = run.metrics.get("split", "test")
    parts = [figure_html(fig, "accuracy matrix: accuracy on each experience's classes after training each experience"),
             html_table(rows),
             f"<p>Class-incremental: one head over every class, no experience id at test time; the {split} split. "
             f"Row i is the model after training experience i, column j its accuracy on experience j's classes; "
             f"average accuracy is the mean of the last row, forgetting the mean over all but the last experience "
             f"of its best accuracy once learnt minus its final one (Chaudhry et al. 2018).</p>"]
    return "Continual learning", "\n".join(parts)
