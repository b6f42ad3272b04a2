"""The one training loop: ``for epoch … for batch …`` in plain sight, extended by callbacks.

Every task, including ones with several optimizers, runs through :meth:`Trainer.fit`. The loop owns
what users get wrong by hand: exact gradient accumulation, clipping, mixed precision, the NaN
guard, resumable state and seeding; tasks own their losses and steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..core.callback import Callback
from ..core.device import autocast_context, resolve_device  # noqa: F401 - re-exported by train
from ..core.errors import TrainingDivergedError, TrainingInterrupted
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .interrupt import StopSignals, signal_name
from .optim import Schedule, make_optimizer, make_schedule, scaled_groups
from ..models.transfer import hold_frozen_norms
from .unfreeze import UnfreezeSchedule

__all__ = ["Trainer", "StepContext"]

LENGTH_DEPENDENT_SCHEDULES = {"onecycle", "cosine", "warmup_cosine"}  # their curve is fixed by the total steps


class StepContext:
    """What a task with ``manual_optimization`` uses to drive its optimizers inside the loop."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.trainer.optimizers

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, name: str = "main") -> None:
        """Clip (when configured), step and zero the gradients of optimizer ``name``."""
        opt = self.trainer.optimizers[name]
        self.trainer._clip(opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.trainer.schedules[name].step_batch()


class Trainer:
    """Train a model on a task with a :class:`~layerwise.core.config.TrainConfig`.

    >>> trainer = Trainer(model, task, cfg.train, callbacks=[EarlyStopping()])   # doctest: +SKIP
    >>> history = trainer.fit(train_loader, val_loader)                          # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, task, cfg, *, callbacks: Iterable[Callback] = (),
                 device: torch.device | None = None, eval_cfg=None):
        self.model = model
        self.task = task
        self.cfg = cfg
        self.eval_cfg = eval_cfg
        self.callbacks = list(callbacks)
        self.device = device or resolve_device(cfg.device)
        self.model.to(self.device)
        if task.manual_optimization and cfg.accumulate > 1:
            from ..core.errors import ConfigError

            raise ConfigError(f"train.accumulate: the '{getattr(task, 'name', type(task).__name__)}' task steps its own "
                              f"optimizers, so gradient accumulation does not apply; set train.accumulate: 1")
        self.optimizers = {}
        for name, group in task.configure_optimizers(model).items():
            # a group is a parameter list, or {"params": [...], "lr": ..., ...} overriding train keys
            overrides = {k: v for k, v in group.items() if k != "params"} if isinstance(group, dict) else {}
            params = group["params"] if isinstance(group, dict) else group
            local = cfg.model_copy(update=overrides) if overrides else cfg
            if cfg.layer_lr_scale:  # learning rates per layer group (fine-tuning): one param group per rate
                params = scaled_groups(model, list(params), local.lr, cfg.layer_lr_scale)
            self.optimizers[name] = make_optimizer(params, local)
        # train.unfreeze: the head alone first, then layer groups from the top (after the optimizers,
        # which hold every parameter that may train)
        plan = getattr(cfg, "unfreeze", None)
        self.unfreeze = UnfreezeSchedule(model, plan.head_epochs, plan.every) if plan and (
            plan.head_epochs or plan.every) else None
        self.schedules: dict[str, Schedule] = {}
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch already trained
        self.global_step = 0  # optimizer steps taken
        self.train_seconds = 0.0  # time spent in training batches (train.max_time), across resumes
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.stop_reason = ""
        self.diverged = False
        self.restored_epoch: int | None = None
        self.batches_per_epoch = 0
        self.total_steps = 0  # optimizer steps the run is planned for (schedules depend on it)
        self._resume_state: dict[str, Any] | None = None
        self._running = self._fresh_running()  # the epoch's sums so far (saved, so resume is exact)
        # training keys a resume changed (train.lr applied by rescaling every optimizer's learning
        # rates and their schedules), kept across resumes and reported in metrics.json
        self.resumes: list[dict[str, Any]] = []
        self.lr_scale = 1.0  # set before fit() by a resume that changes train.lr: new / old

    def _fresh_running(self) -> dict[str, Any]:
        return {"loss": 0.0, "count": 0.0, "samples": 0, "sums": {}}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedules": {k: s.state_dict() for k, s in self.schedules.items()},
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "total_steps": self.total_steps,
            "resumes": self.resumes,
            "running": {k: (float(v) if torch.is_tensor(v) else v) for k, v in self._running.items() if k != "sums"}
            | {"sums": {k: float(v) for k, v in self._running["sums"].items()}},
        }

    def save_checkpoint(self, path: Path) -> None:
        save_checkpoint(path, self.state_dict())

    def resume_from(self, path: Path) -> None:
        """Load a checkpoint. The optimizers' and schedules' states are applied by :meth:`fit`, after it
        has built the schedules: a schedule's constructor sets each group's learning rate (OneCycleLR
        to max_lr / div_factor, LambdaLR to base * factor(0)), so an optimizer state loaded before it
        would be overwritten and the first resumed steps would run at the wrong rate."""
        from ..core.errors import RunError
        from .checkpoint import CHECKPOINT_FIX, state_mismatch

        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:  # another architecture: the checkpoint's, or config.yaml's
            raise RunError(f"{path}: the checkpoint does not fit the model config.yaml describes "
                           f"({state_mismatch(exc)}); one of the two files is another run's: restore the run's own, "
                           f"or start the experiment again") from exc
        if not self.weights_finite():  # a checkpoint is only written of finite weights: this one was damaged since
            raise RunError(f"{path}: the checkpoint's weights are not finite (NaN or infinity); {CHECKPOINT_FIX}")
        for cb in self.callbacks:
            if type(cb).__name__ in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][type(cb).__name__])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step, self.history = state["global_step"], list(state["history"])
        self.train_seconds = state.get("train_seconds", 0.0)
        self._running = state.get("running", self._fresh_running())
        self.resumes = list(state.get("resumes", []))
        self._resume_state = state

    # -- the loop ----------------------------------------------------------------------------
    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.cfg.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def _callbacks(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _total_steps(self, batches: int) -> int:
        per_epoch = -(-batches // self.cfg.accumulate)
        total = per_epoch * self.cfg.epochs
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def fit(self, train_loader, val_loader=None) -> list[dict[str, Any]]:
        """Train until ``epochs``, ``max_steps`` or ``max_time``, or a callback stops; returns the history.

        Ctrl-C or SIGTERM stops at the next optimizer step: the callbacks' ``on_interrupt`` run (the
        checkpoint callback writes one there) and :class:`TrainingInterrupted` is raised."""
        with StopSignals(defer=True) as stop:
            try:
                self._fit(train_loader, val_loader, stop)
            finally:
                if self.unfreeze is not None:
                    self.unfreeze.restore()  # the model leaves fit() as trainable as it came (train.freeze aside)
            if stop.signum is not None:
                self._callbacks("on_interrupt")
                self._callbacks("on_fit_end")
                raise TrainingInterrupted(f"interrupted ({signal_name(stop.signum)}) in epoch {self.epoch + 1} at "
                                          f"step {self.global_step}", stop.signum)
        return self.history

    def _fit(self, train_loader, val_loader, stop: StopSignals) -> None:
        cfg, model, task = self.cfg, self.model, self.task
        self.batches_per_epoch = len(train_loader)
        total_steps = self.total_steps = self._total_steps(self.batches_per_epoch)
        steps_per_epoch = -(-self.batches_per_epoch // cfg.accumulate)
        self.schedules = {n: make_schedule(o, cfg, total_steps, steps_per_epoch) for n, o in self.optimizers.items()}
        if self._resume_state is not None:
            planned = self._resume_state.get("total_steps", total_steps)
            if planned != total_steps and cfg.scheduler.name in LENGTH_DEPENDENT_SCHEDULES:
                from ..core.errors import ConfigError

                raise ConfigError(
                    f"train.epochs/max_steps: the '{cfg.scheduler.name}' schedule was planned for {planned} steps and "
                    f"cannot be stretched to {total_steps} on resume; keep the run's length, or extend runs that use "
                    f"scheduler none, step or plateau")
            for name, opt in self.optimizers.items():  # after the schedules: see resume_from
                opt.load_state_dict(self._resume_state["optimizers"][name])
            for name, sched in self.schedules.items():
                sched.load_state_dict(self._resume_state["schedules"].get(name, {}))
            if self.lr_scale != 1.0:
                for name, opt in self.optimizers.items():
                    self.schedules[name].scale_lr(opt, self.lr_scale)
            set_rng_state(self._resume_state["rng"])
            self._resume_state = None
        ctx = StepContext(self)
        opt = self.optimizers.get("main")
        schedule = self.schedules.get("main")
        accumulate = cfg.accumulate
        autocast = autocast_context(self.device, cfg.precision)
        self._callbacks("on_fit_start")
        done = cfg.max_steps is not None and self.global_step >= cfg.max_steps
        while self.epoch < cfg.epochs and not self.should_stop and not done and stop.signum is None:
            model.train()
            unfrozen = self.unfreeze.apply(self.epoch) if self.unfreeze is not None else None
            hold_frozen_norms(model)  # frozen batch norms keep the statistics they were loaded with
            train_loader.set_epoch(self.epoch, self.batch_in_epoch)
            self._callbacks("on_epoch_start")
            started = time.perf_counter()
            run = self._running if self.batch_in_epoch else self._fresh_running()
            self._running = run
            run["loss"] = torch.as_tensor(run["loss"], dtype=torch.float32, device=self.device)
            run["sums"] = {k: torch.as_tensor(v, device=self.device) for k, v in run["sums"].items()}
            sums = run["sums"]
            samples_before = run["samples"]
            window_count = 0.0  # normalizer of the accumulation window (a tensor once summed)
            in_window = 0
            batches_left = self.batches_per_epoch - self.batch_in_epoch
            for i, batch in enumerate(train_loader):
                with autocast:
                    out = task.training_step(model, batch, ctx)
                if not task.manual_optimization:
                    if accumulate == 1:
                        out.loss.backward()
                    else:
                        # backward on the batch's sum; divide by the window's total count before
                        # stepping: exactly the large-batch mean, unequal micro-batches included
                        (out.loss * out.count).backward()
                        window_count = window_count + out.count
                    in_window += 1
                stepped = False
                if not task.manual_optimization and (in_window == accumulate or i == batches_left - 1):
                    if accumulate > 1:
                        scale = 1.0 / window_count
                        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
                        torch._foreach_mul_(grads, scale if not torch.is_tensor(scale) else scale.to(grads[0].dtype))
                    self._clip(opt)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    schedule.step_batch()
                    window_count, in_window, stepped = 0.0, 0, True
                elif task.manual_optimization:
                    stepped = True  # the task stepped its optimizers itself
                if stepped:
                    self.global_step += 1
                self.batch_in_epoch += 1
                # one in-place op per value: this runs every step, next to a fast model's step
                if torch.is_tensor(out.count):  # a weighted count
                    run["loss"] += out.loss.detach() * out.count.detach()
                    run["count"] = run["count"] + out.count.detach()
                else:  # a sample count stays a Python number
                    run["loss"].add_(out.loss.detach(), alpha=out.count)
                    run["count"] += out.count
                for k, v in out.sums.items():
                    if k in sums:
                        sums[k].add_(v.detach())
                    else:
                        sums[k] = v.detach().clone()
                n = len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
                run["samples"] += n
                logs = {"batch_size": n, "optimizer_step": stepped}
                if self.batch_in_epoch % cfg.log_every == 0 or i == batches_left - 1:
                    logs["running"] = self._check_finite(run)
                self._callbacks("on_batch_end", logs)
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps and stepped:
                    done = True
                    break
                if stop.signum is not None and stepped:  # between two optimizer steps: a resumable state
                    self.train_seconds += time.perf_counter() - started
                    return
                if (cfg.max_time is not None and stepped
                        and self.train_seconds + time.perf_counter() - started >= cfg.max_time):
                    done, self.stop_reason = True, "max_time"
                    break
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            running = self._check_finite(run)
            samples = run["samples"] - samples_before
            logs = {"epoch": self.epoch + 1, "step": self.global_step}
            logs.update({f"train_{k}": v for k, v in running.items()})
            if val_loader is not None:
                from ..tasks.evaluation import evaluate_model

                val = evaluate_model(model, task, val_loader, self.eval_cfg, precision=cfg.precision)
                logs["val_loss"] = val["loss"]
                for key in self._val_keys():
                    if key in val:
                        logs[f"val_{key}"] = val[key]
            self._check_epoch(logs)
            logs["lr"] = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
            if unfrozen is not None:
                logs["unfrozen_groups"] = unfrozen
            logs["samples_per_s"] = samples / max(elapsed, 1e-9)
            logs["time_s"] = elapsed
            self.epoch += 1
            self.batch_in_epoch = 0
            self._running = self._fresh_running()
            for sched in self.schedules.values():
                sched.step_epoch(logs)
            self.history.append(logs)
            self._callbacks("on_epoch_end", logs)
        if stop.signum is None:
            self._callbacks("on_fit_end")

    def _val_keys(self) -> list[str]:
        keys = [self.task.main_metric]
        for cb in self.callbacks:  # whatever early stopping or a schedule watches must be logged
            monitor = getattr(cb, "monitor", None)
            if monitor and monitor.startswith("val_"):
                keys.append(monitor[4:])
        monitor = self.cfg.scheduler.monitor
        if monitor.startswith("val_"):
            keys.append(monitor[4:])
        return list(dict.fromkeys(keys))

    def weights_finite(self) -> bool:
        """Whether every parameter and buffer of the model is finite (one reduction per tensor)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True

    def _check_epoch(self, logs: dict[str, Any]) -> None:
        """After an epoch: a finite training loss is not enough (a NaN validation loss, weights that
        overflowed in the last steps); stop with the message rather than end a run 'completed'."""
        val = logs.get("val_loss")
        if val is not None and not math.isfinite(val):
            self._diverge(f"the validation loss became {val} after epoch {self.epoch + 1} (step {self.global_step})")
        if not self.weights_finite():
            self._diverge(f"the model's weights became non-finite in epoch {self.epoch + 1} (step {self.global_step})")

    def _diverge(self, what: str) -> None:
        self.diverged = True
        self._callbacks("on_fit_end")
        raise TrainingDivergedError(f"{what}; the last good checkpoint is kept; lower train.lr or set "
                                    f"train.grad_clip, then --resume (the new train.lr is applied) or restart")

    def assert_finite(self) -> None:
        """Raise :class:`TrainingDivergedError` if the epoch's loss so far is NaN or infinite."""
        self._check_finite(self._running)

    def _check_finite(self, run: dict[str, Any]) -> dict[str, float]:
        """Synchronize running values; stop with a clear message on NaN/Inf (no checkpoint written)."""
        loss = float(run["loss"]) / max(float(run["count"]), 1e-12)
        if not math.isfinite(loss):
            self._diverge(f"the training loss became {loss} in epoch {self.epoch + 1} (step {self.global_step})")
        running = {"loss": loss}
        running.update(self.task.summarize({k: float(v) for k, v in run["sums"].items()}, run["samples"]))
        return running
