"""Optimizers and learning-rate schedules, each registered by name."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..core.registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Schedule", "make_optimizer", "make_schedule", "scaled_groups"]

OPTIMIZERS: Registry[Callable] = Registry("optimizer", key="train.optimizer")
SCHEDULERS: Registry[Callable] = Registry("scheduler", key="train.scheduler.name")


def _param_groups(params, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalization weights (1-D tensors), as is standard.

    ``params``: tensors, or groups ``{"params": [...], "lr": ...}`` (``train.layer_lr_scale``), each split alike."""
    params = list(params)
    entries = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = []
    for entry in entries:
        extra = {k: v for k, v in entry.items() if k != "params"}
        trainable = [p for p in entry["params"] if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        if decay or len(entries) == 1:
            groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def scaled_groups(model: torch.nn.Module, params, lr: float, scales: dict[str, float]) -> list[dict]:
    """``params`` split by ``train.layer_lr_scale``: the first glob pattern matching a parameter's name sets
    its learning rate to ``lr * scale`` (discriminative fine-tuning, Howard & Ruder 2018); parameters
    no pattern matches keep ``lr``. A pattern that matches no parameter of the model is refused (one
    of several optimizers, a GAN's generator, may hold none of a pattern's parameters)."""
    from ..models.transfer import parameters_matching

    scale_of: dict[str, float] = {}
    for pattern, names in parameters_matching(model, scales, "train.layer_lr_scale").items():
        for name in names:
            scale_of.setdefault(name, scales[pattern])  # the first matching pattern wins
    names = {id(p): name for name, p in model.named_parameters()}
    by_scale: dict[float, list] = {}
    for p in params:
        by_scale.setdefault(scale_of.get(names.get(id(p), ""), 1.0), []).append(p)
    return [{"params": group, **({} if scale == 1.0 else {"lr": lr * scale})} for scale, group in by_scale.items()]


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg):
    return torch.optim.SGD(_param_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(params, cfg):
    return torch.optim.Adam(_param_groups(params, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg):
    return torch.optim.AdamW(_param_groups(params, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(params, cfg):
    return torch.optim.RMSprop(_param_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)(list(params), cfg)


class Schedule:
    """A scheduler stepped per optimizer step (``interval='step'``) or per epoch."""

    def __init__(self, scheduler, interval: str, monitor: str | None = None):
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def step_batch(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def step_epoch(self, logs: dict) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.monitor is not None:
            if self.monitor in logs:
                self.scheduler.step(logs[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)

    def scale_lr(self, optimizer: torch.optim.Optimizer, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from here on, schedule included: every lr a group
        or the scheduler keeps (the current one, OneCycle's initial / max / min, the base rates) is
        scaled, so the curve goes on at the new height (a resume with another train.lr)."""
        for group in optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= factor
        for attr in ("base_lrs", "_last_lr"):
            if self.scheduler is not None and getattr(self.scheduler, attr, None) is not None:
                setattr(self.scheduler, attr, [lr * factor for lr in getattr(self.scheduler, attr)])


@SCHEDULERS.register("none")
def _none(opt, sched, cfg, total_steps, steps_per_epoch):
    return Schedule(None, "step")


@SCHEDULERS.register("step")
def _step(opt, sched, cfg, total_steps, steps_per_epoch):
    return Schedule(torch.optim.lr_scheduler.StepLR(opt, sched.step_size, sched.gamma), "epoch")


@SCHEDULERS.register("cosine")
def _cosine(opt, sched, cfg, total_steps, steps_per_epoch):
    return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps), sched.min_lr), "step")


@SCHEDULERS.register("onecycle")
def _onecycle(opt, sched, cfg, total_steps, steps_per_epoch):
    peak = sched.max_lr or cfg.lr  # per group, in proportion to its rate (train.layer_lr_scale keeps its ratios)
    return Schedule(torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[peak * group["lr"] / cfg.lr for group in opt.param_groups], total_steps=max(2, total_steps),
        pct_start=sched.pct_start), "step")


@SCHEDULERS.register("warmup_cosine")
def _warmup_cosine(opt, sched, cfg, total_steps, steps_per_epoch):
    warmup = max(1, int(total_steps * sched.warmup_fraction))
    floor = sched.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return Schedule(torch.optim.lr_scheduler.LambdaLR(opt, factor), "step")


@SCHEDULERS.register("plateau")
def _plateau(opt, sched, cfg, total_steps, steps_per_epoch):
    from ..tasks import metric_mode

    mode = metric_mode(sched.monitor)
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=sched.factor, patience=sched.patience, min_lr=sched.min_lr), "epoch", sched.monitor)


def make_schedule(optimizer, cfg, total_steps: int, steps_per_epoch: int) -> Schedule:
    return SCHEDULERS.get(cfg.scheduler.name)(optimizer, cfg.scheduler, cfg, total_steps, steps_per_epoch)
