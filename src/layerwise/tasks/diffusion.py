"""The diffusion task: train a denoiser to predict the noise added to its inputs (Ho et al. 2020,
"Denoising Diffusion Probabilistic Models", L_simple), with an exponential moving average (EMA) of the
weights for sampling.

Each training step draws one step t and one noise per sample, and the loss is the mean squared error
between the predicted and the true noise. Labels (conditional models) are dropped with probability
``model.label_dropout`` so one network also learns the unconditional model classifier-free guidance
needs. After every optimizer step the :class:`EMA` callback moves the model's ``ema`` copy towards
the trained weights (decay ``model.ema_decay``, warmed up as (1 + n) / (10 + n) so early averages are
not dominated by the random initialisation); sampling and evaluation use that copy.

Metrics: ``loss`` (training noise MSE); evaluation reports ``noise_mse`` of the EMA weights on the
split, with a fixed noise seed so epochs and runs compare on the same draws.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..core.callback import Callback
from ..core.errors import ModelError, RunError
from . import StepOutput, Task, register_task
from .evaluation import EvalResult

__all__ = ["EMA", "DiffusionEvaluator", "DiffusionTask"]

EVAL_SEED = 0  # noise of the evaluation loss: the same draws every epoch


def _check_diffusion(model: torch.nn.Module) -> None:
    if not hasattr(model, "diffusion_loss"):
        family = getattr(getattr(model, "config", None), "family", type(model).__name__)
        raise ModelError(f"model.family: task 'diffusion' needs a diffusion model; '{family}' is not one; "
                         f"use model.family: diffusion")


class DiffusionEvaluator:
    """Mean noise-prediction MSE over a split (per-sample losses summed, then divided)."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        self.total += float(outputs.detach().double().sum())
        self.count += int(outputs.shape[0])

    def compute(self, class_names=None) -> EvalResult:
        return EvalResult({"noise_mse": self.total / max(self.count, 1)}, {"samples": self.count})


@register_task("diffusion")
class DiffusionTask(Task):
    """Noise prediction (DDPM's L_simple); lower is better."""

    target = None  # any data; class labels are needed (and checked) only by conditional models
    predicts_target = False  # the output is a noise-prediction error per sample
    main_metric = "loss"
    greater_is_better: ClassVar[dict[str, bool]] = {}

    def check_model(self, model) -> None:
        _check_diffusion(model)

    def configure_optimizers(self, model):
        _check_diffusion(model)
        # the EMA copy and the untrained probe head are not optimized
        return {"main": [p for p in model.net.parameters() if p.requires_grad]}

    def _labels(self, model, y):
        return y if getattr(model, "num_labels", 0) else None

    def training_step(self, model, batch, ctx):
        x, y = batch
        loss = model.diffusion_loss(x, self._labels(model, y)).mean()
        return StepOutput(loss, x.shape[0])

    def evaluation_step(self, model, batch):
        x, y = batch
        gen = torch.Generator(device=x.device).manual_seed(EVAL_SEED)  # never moves the training RNG
        per_sample = model.diffusion_loss(x, self._labels(model, y), generator=gen, use_ema=True, drop_labels=False)
        return StepOutput(per_sample.mean(), x.shape[0], per_sample)

    def summarize(self, sums, count):
        return {}

    def callbacks(self, run_dir) -> list:
        return [EMA()]

    def predict(self, outputs):
        raise RunError("a diffusion run makes no predictions; draw samples with run.model.sample(n)")

    def evaluator(self, eval_cfg) -> Any:
        return DiffusionEvaluator()


class EMA(Callback):
    """After each optimizer step: ``ema <- d * ema + (1 - d) * weights``, d = min(decay, (1 + n) / (10 + n)).

    The averaged weights live in the model (``model.ema``), so the saved model samples with them; this
    callback's state (the update count) goes into checkpoints so a resumed run continues the warm-up.
    """

    def __init__(self, decay: float | None = None):
        self.decay = decay
        self.updates = 0

    def on_fit_start(self, trainer) -> None:
        _check_diffusion(trainer.model)
        if self.decay is None:
            self.decay = trainer.model.config.ema_decay

    def on_batch_end(self, trainer, logs) -> None:
        if not logs.get("optimizer_step"):
            return
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        trainer.model.update_ema(decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        self.decay = state.get("decay", self.decay)
