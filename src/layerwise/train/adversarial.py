"""Adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"): minimize the loss on the worst inputs within an eps-ball of the training inputs.

``task: {name: classification, adversarial_training: {eps: ...}}`` extends the task's ``training_step``
(a mixin): each batch (or a ``ratio`` share of it) is replaced by its PGD (or FGSM) version before the
task's own step, so the one training loop trains on it with its accumulation, clipping, precision and
checkpoints unchanged. Attacks run in the same
:class:`~layerwise.ops.attacks.AttackSpace` as `layerwise attack` (images in pixel units of [0, 1]).

>>> task = adversarial_task(task, cfg.task_options.adversarial_training, bundle)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..core.errors import ConfigError
from ..data.kinds import input_kind
from ..ops.attacks import AttackSpace, attack_batch, pick_samples

__all__ = ["AdversarialTraining", "adversarial_task", "check_adversarial"]

_SUMS = ("adv_correct", "adv_count")  # sums of the adversarial part of each batch
# the key, and where configs wrote it until it moved into the task's section (the old spelling goes next release)
_KEY = "task.adversarial_training (train.adversarial in older configs)"


def check_adversarial(task_cls: type, spec=None) -> None:
    """Refuse, with one line, adversarial training of what it cannot attack: discrete inputs (when
    ``spec`` is given), or a task that does not classify its labels with one optimizer."""
    if spec is not None and not input_kind(spec).continuous:
        raise ConfigError(f"{_KEY}: needs continuous inputs, but this run's inputs are {spec.kind} (discrete values "
                          f"cannot be perturbed by gradients); remove it or use image, tabular or sequence data")
    name = getattr(task_cls, "name", task_cls.__name__)
    if task_cls.target != "class" or not task_cls.predicts_target or task_cls.manual_optimization:
        raise ConfigError(f"{_KEY}: adversarial training needs a classification task, but this run's task is "
                          f"'{name}'; remove it")


def adversarial_task(task, cfg, bundle):
    """``task`` set up for adversarial training when ``cfg`` (the task's ``adversarial_training``) is set,
    else ``task``.

    Refuses, with one line, what it cannot attack: called while preparing a run, before any file is
    written."""
    if cfg is None:
        return task
    check_adversarial(type(task), bundle.spec)
    # the task becomes an instance of a subclass of its own class with the mixin in front: it keeps
    # its state, its metrics and its type (isinstance checks of other features still hold)
    task.__class__ = _with_adversarial(type(task))
    task.adversarial = cfg
    task.space = AttackSpace(bundle.spec, bundle.preprocessor.inputs, bundle.train.x)
    return task


@functools.cache
def _with_adversarial(cls: type) -> type:
    return type(f"Adversarial{cls.__name__}", (AdversarialTraining, cls), {"__module__": __name__})


class AdversarialTraining:
    """A task mixin: training batches are attacked before the task's own ``training_step``.

    Set on a task by :func:`adversarial_task`, with ``adversarial`` (the ``adversarial_training`` options)
    and ``space`` (the :class:`~layerwise.ops.attacks.AttackSpace`). The history gains
    ``train_adv_accuracy``: accuracy on the adversarial part of the batches, read off the logits the
    training step computes anyway (``train_accuracy`` is over the mixed batches).
    """

    adversarial: Any
    space: AttackSpace

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial version of a preprocessed batch, preprocessed again for the model."""
        cfg, space = self.adversarial, self.space
        training = model.training
        # eval mode while attacking: BatchNorm normalizes with its running statistics and does not
        # fold the attack's forward passes (adversarial inputs, several per batch) into them, and
        # dropout does not change the model between attack steps
        model.eval()
        try:
            z = space.from_model(x.float())
            adv = attack_batch(space.model_fn(model), space, z, y, cfg.method, cfg.eps, cfg.steps, cfg.step_size,
                               cfg.norm)  # global RNG for PGD's start: saved in checkpoints, so resumes repeat it
        finally:
            model.train(training)
        return space.to_model(adv).to(x.dtype)

    def mix(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The batch with its first ``n = ratio * len(x)`` samples (a random draw: batches are shuffled)
        replaced by their adversarial versions; returns it and ``n``."""
        n = max(1, round(self.adversarial.ratio * len(x)))
        adv = self.perturb(model, x[:n], y[:n])
        return (torch.cat([adv, x[n:]]) if n < len(x) else adv), n

    def training_step(self, model: torch.nn.Module, batch: tuple, ctx) -> Any:
        x, y = batch
        if ctx.trainer.epoch < self.adversarial.start_epoch:
            return super().training_step(model, batch, ctx)
        mixed, n = self.mix(model, x, y)
        out = super().training_step(model, (mixed, y), ctx)
        out.sums["adv_correct"] = (out.outputs[:n].detach().argmax(1) == y[:n]).sum()
        out.sums["adv_count"] = torch.tensor(n, device=y.device)
        return out

    def summarize(self, sums: dict[str, float], count: float) -> dict[str, float]:
        metrics = super().summarize({k: v for k, v in sums.items() if k not in _SUMS}, count)
        if sums.get("adv_count"):
            metrics["adv_accuracy"] = sums["adv_correct"] / sums["adv_count"]
        return metrics

    def robustness(self, model: torch.nn.Module, split, split_name: str, device: torch.device,
                   batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
        """Clean and PGD accuracy of ``adversarial.eval_samples`` samples of a split, with how they were measured.

        Always PGD with a random start (at the configured eps, steps and norm), even after FGSM
        training: FGSM-trained models can resist FGSM and still fall to PGD."""
        cfg, space = self.adversarial, self.space
        x, y = pick_samples(split, cfg.eval_samples, seed)
        model_fn = space.model_fn(model.to(device).eval())
        generator = torch.Generator().manual_seed(seed)
        clean = robust = 0
        for start in range(0, len(x), batch_size):
            z = space.from_stored(x[start:start + batch_size].to(device))
            yb = y[start:start + batch_size].to(device)
            adv = attack_batch(model_fn, space, z, yb, "pgd", cfg.eps, cfg.steps, cfg.step_size, cfg.norm,
                               generator=generator)
            with torch.no_grad():
                clean += int((model_fn(z).argmax(1) == yb).sum())
                robust += int((model_fn(adv).argmax(1) == yb).sum())
        return {f"{split_name}_robust_accuracy": robust / len(x), f"{split_name}_clean_accuracy": clean / len(x),
                "split": split_name, "samples": len(x), "method": "pgd", "eps": cfg.eps, "steps": cfg.steps,
                "step_size": cfg.step_size if cfg.step_size is not None else 2.5 * cfg.eps / cfg.steps,
                "norm": cfg.norm, "space": space.description, "trained_with": cfg.model_dump(mode="json")}
