"""Adversarial training of a GAN (Goodfellow et al. 2014; DCGAN recipe of Radford et al. 2016) as a
step of the one training loop.

Each batch makes one discriminator step, then one generator step, through the loop's
:class:`~layerwise.train.trainer.StepContext`; the two Adam optimizers ('generator' and
'discriminator', lr and betas from the task's options: ``task: {name: adversarial, lr_d: 1e-4}``) are
created, scheduled and checkpointed by the loop like any other, so ``--resume`` continues both.

Losses (``model.loss``):
- ``non_saturating``: D minimises softplus(-D(x)) + softplus(D(G(z))), G minimises softplus(-D(G(z)))
  (Goodfellow et al.'s "-log D" trick: strong gradients while D still wins);
- ``hinge``: D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)) (Lim & Ye 2017;
  Miyato et al. 2018, usually with spectral normalisation).

History: ``d_loss``, ``g_loss``, ``d_x`` = mean D(x) and ``d_g_z`` = mean D(G(z)) as probabilities
(sigmoid of the logits), ``accuracy`` of D's auxiliary class head on real inputs; ``loss`` is
d_loss + g_loss (a number for the loop's NaN guard, not a quality measure). Evaluation adds
``d_accuracy``: how often D tells real from fake (about 0.5 when G fools it).
"""

from __future__ import annotations

import html
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.config import TaskConfig
from ..core.errors import ModelError
from ..core.sections import register_section
from ..data.kinds import input_kind
from . import StepOutput, Task, register_task
from .evaluation import EvalResult

__all__ = ["Adversarial", "AdversarialEvaluator", "GANTaskConfig", "gan_losses"]

EVAL_SEED = 0  # evaluation noise is fixed, so validation numbers are comparable across epochs


def gan_losses(kind: str, real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (``real`` logits given) or the generator's (``real`` None), batch mean."""
    if kind == "hinge":
        if real is None:
            return -fake.mean()
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if real is None:
        return F.softplus(-fake).mean()  # -log sigmoid(D(G(z)))
    return F.softplus(-real).mean() + F.softplus(fake).mean()


class GANTaskConfig(TaskConfig):
    """``task: {name: adversarial, ...}``: the two players' Adam optimizers (``train.optimizer``, ``lr``,
    ``betas`` and ``weight_decay`` do not apply to them; the schedule, clipping and precision of ``train`` do)."""

    lr_g: float = Field(2e-4, gt=0, description="generator learning rate (Adam)")
    lr_d: float = Field(2e-4, gt=0, description="discriminator learning rate (Adam)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of both optimizers (DCGAN: 0.5)")


@register_task("adversarial")
class Adversarial(Task):
    """One D step and one G step per batch; metrics of both players."""

    target = "class"  # labels drive the conditional models and D's auxiliary head
    manual_optimization = True
    main_metric = "g_loss"
    greater_is_better: ClassVar[dict[str, bool]] = {"accuracy": True}
    Config = GANTaskConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        self._eval_extra: dict[str, torch.Tensor] | None = None

    def check_model(self, model):
        if not all(hasattr(model, a) for a in ("generator", "discriminate", "generate_from")):
            family = getattr(getattr(model, "config", None), "family", type(model).__name__)
            raise ModelError(f"model.family: task 'adversarial' needs a generator and a discriminator; '{family}' has "
                             f"neither; use family gan")

    def configure_optimizers(self, model):
        cfg = self.config
        g_ids = {id(p) for p in model.generator.parameters()}
        if model.class_embed is not None:
            g_ids |= {id(p) for p in model.class_embed.parameters()}
        g_params = [p for p in model.parameters() if id(p) in g_ids]
        d_params = [p for p in model.parameters() if id(p) not in g_ids]
        common = {"optimizer": "adam", "betas": tuple(cfg.betas), "weight_decay": 0.0}
        return {"generator": {"params": g_params, "lr": cfg.lr_g, **common},
                "discriminator": {"params": d_params, "lr": cfg.lr_d, **common}}

    def _labels(self, model, y):
        return y if model.config.conditional else None

    def training_step(self, model, batch, ctx):
        x, y = batch
        n = x.shape[0]
        kind, labels = model.config.loss, self._labels(model, y)
        # discriminator: real vs a detached fake, so this step leaves G's weights alone
        fake = model.generate_from(model.sample_latent(n, x.device), labels).detach()
        d_real, class_logits = model.discriminate(x, labels)
        d_fake, _ = model.discriminate(fake, labels)
        d_loss = gan_losses(kind, d_real, d_fake)
        total = d_loss
        if model.config.aux_weight:
            total = total + model.config.aux_weight * F.cross_entropy(class_logits.float(), y)
        ctx.backward(total)
        ctx.step("discriminator")
        # generator: a fresh z through the updated D
        g_fake, _ = model.discriminate(model.generate_from(model.sample_latent(n, x.device), labels), labels)
        g_loss = gan_losses(kind, None, g_fake)
        ctx.backward(g_loss)
        ctx.step("generator")
        # G's backward went through D: drop those gradients so the next D step starts clean
        ctx.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss, g_loss = d_loss.detach(), g_loss.detach()
        sums = {"d_loss": d_loss * n, "g_loss": g_loss * n,
                "d_x": torch.sigmoid(d_real.detach()).sum(), "d_g_z": torch.sigmoid(d_fake.detach()).sum(),
                "accuracy": (class_logits.detach().argmax(1) == y).sum()}
        return StepOutput(d_loss + g_loss, n, class_logits.detach(), sums)

    def evaluation_step(self, model, batch):
        x, y = batch
        n = x.shape[0]
        kind, labels = model.config.loss, self._labels(model, y)
        gen = torch.Generator().manual_seed(EVAL_SEED + n)  # fixed noise; the global RNG is left untouched
        d_real, class_logits = model.discriminate(x, labels)
        d_fake, _ = model.discriminate(model.generate_from(model.sample_latent(n, x.device, gen), labels), labels)
        d_loss, g_loss = gan_losses(kind, d_real, d_fake), gan_losses(kind, None, d_fake)
        # evaluate_model hands the evaluator only the outputs, which stay D's class logits (so the
        # report's misclassified examples are right); the adversarial numbers travel beside them
        self._eval_extra = {"d_real": d_real.float(), "d_fake": d_fake.float(), "d_loss": d_loss, "g_loss": g_loss}
        return StepOutput(d_loss + g_loss, n, class_logits)

    def summarize(self, sums, count):
        return {k: v / max(count, 1e-12) for k, v in sums.items()}

    def predict(self, outputs):
        proba = torch.softmax(outputs.float(), dim=1)
        return {"label": proba.argmax(1), "proba": proba}

    def evaluator(self, eval_cfg):
        return AdversarialEvaluator(self)


class AdversarialEvaluator:
    """Streams D's verdicts over a split: losses, D(x), D(G(z)), real-vs-fake and class accuracy."""

    def __init__(self, task: Adversarial):
        self.task = task
        self.sums = {"d_loss": 0.0, "g_loss": 0.0, "d_x": 0.0, "d_g_z": 0.0, "d_correct": 0.0, "correct": 0.0}
        self.n = 0

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        extra, n = self.task._eval_extra, len(y)
        self.sums["d_loss"] += float(extra["d_loss"]) * n
        self.sums["g_loss"] += float(extra["g_loss"]) * n
        self.sums["d_x"] += float(torch.sigmoid(extra["d_real"]).sum())
        self.sums["d_g_z"] += float(torch.sigmoid(extra["d_fake"]).sum())
        self.sums["d_correct"] += float((extra["d_real"] > 0).sum() + (extra["d_fake"] <= 0).sum())
        self.sums["correct"] += float((outputs.argmax(1) == y.to(outputs.device)).sum())
        self.n += n

    def compute(self, class_names=None) -> EvalResult:
        n = max(self.n, 1)
        s = self.sums
        return EvalResult({"d_loss": s["d_loss"] / n, "g_loss": s["g_loss"] / n, "d_x": s["d_x"] / n,
                           "d_g_z": s["d_g_z"] / n, "d_accuracy": s["d_correct"] / (2 * n),
                           "accuracy": s["correct"] / n}, {"samples": self.n})


@register_section("gan")
def gan_section(run) -> tuple[str, str] | None:
    """A grid of generated samples (one row per class for conditional models) and D's metrics."""
    if run.config.task != "adversarial" or not input_kind(run.spec).picture:
        return None
    from ..core.sections import image_grid_html

    model = run.model
    classes = run.spec.num_classes if model.config.conditional else 0
    per_row = 8
    n = (classes or 4) * per_row
    labels = torch.arange(classes).repeat_interleave(per_row) if classes else None
    images = run.preprocessing.inputs.denormalize_pixels(model.generate(n, labels, seed=0).cpu()).clamp(0, 1)
    metrics = run.metrics.get("metrics", {})
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("d_accuracy", "d_x", "d_g_z", "g_loss") if k in metrics)
    note = "One row per class. " if classes else ""
    return ("GAN samples", f"<p>{note}Seed 0. {html.escape(shown)}</p>" + image_grid_html(images, per_row, "generated samples", size=0.8))
