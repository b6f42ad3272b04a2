"""Contrastive self-supervised pretraining: learn features from unlabelled data by recognising two
random views of the same sample (``data/views.py``) among the views of other samples.

``method: simclr`` (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): the model's features go through a projection MLP; the NT-Xent loss (normalised
temperature-scaled cross-entropy) makes each view pick its partner among the other 2N - 1 views of
the batch by cosine similarity over ``temperature``. Every other sample of the batch is a negative,
so bigger batches help.

``method: byol`` (Grill et al. 2020, "Bootstrap Your Own Latent"): no negatives. An online network
(the model, a projector and a predictor) predicts the projection a *target* network (a copy of
model and projector, updated as an exponential moving average of the online weights with
``momentum``) gives the other view; the loss is 2 - 2 cos(prediction, target projection), both ways.
The moving average is taken at the start of each optimizer step's first batch, so a resumed run
updates it exactly when an uninterrupted one would.

Any family with ``forward_features`` learns this way: images get crops, jitter and cutout; tables and
feature sequences get SCARF's feature corruption (Bahri et al. 2022). The projection head (and
BYOL's predictor and target) are the run's ``pretext`` modules: saved, checkpointed and resumed with
the model, and left behind by ``model.init_from``, which fine-tunes the features on labels.

Metrics: ``loss`` and ``pair_accuracy``, the share of views whose most similar other view is their
partner (chance: 1 / (2N - 1)); evaluation contrasts groups of ``train.batch_size`` samples, as
training does, so the two compare. What the features are worth is measured by ``layerwise probe``
(linear probe and k-NN at several label budgets beside raw inputs and random weights), which the
report's "Representation" section shows.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import AugmentConfig, TaskConfig
from ..core.errors import ConfigError
from ..data.kinds import input_kind
from ..data.views import corrupt_features, image_view
from . import StepOutput, Task, register_task
from .pretext import EVAL_SEED, MeanEvaluator, feature_size, predict_error, view_seed

__all__ = ["Contrastive", "ContrastiveConfig", "nt_xent", "projection_mlp"]


class ContrastiveConfig(TaskConfig):
    """``task: {name: contrastive, method: simclr, temperature: 0.5, ...}``."""

    method: Literal["simclr", "byol"] = Field("simclr", description="simclr: NT-Xent against the batch's other "
                                              "samples; byol: predict a moving-average target, no negatives")
    temperature: float = Field(0.5, gt=0, description="simclr: softmax temperature of the cosine similarities")
    projection_dim: int = Field(128, ge=1, description="output size of the projection head")
    projection_hidden: int | None = Field(None, ge=1, description="hidden width of the projection (and byol "
                                          "predictor) MLP; default: the model's feature size")
    momentum: float = Field(0.99, gt=0, lt=1, description="byol: weight of the old target in its moving average")
    augment: AugmentConfig = Field(
        default_factory=lambda: AugmentConfig(shift=0.1, rotation=15, scale=0.25, noise=0.1),
        description="images: the random affine part of a view (the crop), and noise after normalisation")
    jitter: float = Field(0.4, ge=0, le=1, description="images: brightness and contrast jitter of a view")
    erase: float = Field(0.4, ge=0, le=1, description="images: half the views lose a rectangle of up to this "
                         "share of each side (cutout); 0: none")
    corruption: float = Field(0.6, gt=0, lt=1, description="tables and sequences: share of a view's values "
                              "replaced by another row's (SCARF)")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of two views' projections (N, d) each: the mean over all 2N views of the cross-entropy
    of picking the partner among the other 2N - 1 by cosine similarity / temperature. Also returns,
    per view (2N,), whether its most similar other view is its partner."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, d)
    similarity = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))  # a view is not its own candidate
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(similarity, partners)
    return loss, similarity.detach().argmax(1) == partners


def projection_mlp(features: int, hidden: int, out: int) -> nn.Sequential:
    """SimCLR's projection head g (and BYOL's predictor): linear, batch norm, ReLU, linear."""
    return nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


@register_task("contrastive")
class Contrastive(Task):
    target = None  # labels are never read: any data with inputs
    predicts_target = False
    embeds = True  # the model's features are the product: `layerwise embed` and `layerwise probe` read them
    main_metric = "pair_accuracy"
    greater_is_better = {"pair_accuracy": True}
    Config = ContrastiveConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        if spec.kind in ("tokens", "text"):
            raise ConfigError("task contrastive: token ids have no random views here; pretrain a text model with "
                              "task: masked_lm")
        self.images = input_kind(spec).picture

    def check_model(self, model: torch.nn.Module) -> None:
        if not callable(getattr(model, "forward_features", None)):
            raise ConfigError(f"task contrastive: learns the model's forward_features; {type(model).__name__} has none")

    def extend_model(self, model: torch.nn.Module) -> None:
        c = self.config
        width = feature_size(model)
        hidden = c.projection_hidden or width
        pretext = nn.Module()
        if c.method == "byol":  # the target copies the online network as it starts (init_from included)
            pretext.target_encoder = copy.deepcopy(model).requires_grad_(False)
        pretext.projector = projection_mlp(width, hidden, c.projection_dim)
        if c.method == "byol":
            pretext.target_projector = copy.deepcopy(pretext.projector).requires_grad_(False)
            pretext.predictor = projection_mlp(c.projection_dim, hidden, c.projection_dim)
        model.pretext = pretext

    def loader(self, split, name, cfg, transform, device):
        """Training batches drop the last incomplete one: a batch of one has no other views to contrast,
        and a small last batch would be an easier problem than the others."""
        if name != "train":
            return None
        from ..data.loader import BatchLoader

        if len(split) < max(2, cfg.train.batch_size):
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is more than the {len(split)} training "
                              f"samples; contrastive batches must be full, lower it")
        return BatchLoader(split, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed, transform=transform,
                           train=False, drop_last=True, device=device)

    # -- views and losses -----------------------------------------------------------------------
    def views(self, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two random views of a normalised batch, as the model reads them."""
        generator = torch.Generator().manual_seed(seed)
        c = self.config
        if not self.images:
            return corrupt_features(x, c.corruption, generator), corrupt_features(x, c.corruption, generator)
        inputs = self.preprocessing.inputs
        pixels = inputs.denormalize_pixels(x.float())
        out = []
        for _ in range(2):
            view = inputs.normalize_pixels(image_view(pixels, c.augment.model_dump(), c.jitter, c.erase, generator))
            if c.augment.noise:
                view = view + c.augment.noise * torch.randn(view.shape, generator=generator).to(view.device)
            out.append(view.to(x.dtype))
        return out[0], out[1]

    def _losses(self, model, v1, v2) -> tuple[torch.Tensor, torch.Tensor]:
        pretext = model.pretext
        z1, z2 = (pretext.projector(model.forward_features(v).flatten(1)) for v in (v1, v2))
        if self.config.method == "simclr":
            return nt_xent(z1, z2, self.config.temperature)
        with torch.no_grad():
            t1, t2 = (pretext.target_projector(pretext.target_encoder.forward_features(v).flatten(1)) for v in (v1, v2))
            _, correct = nt_xent(z1.detach(), z2.detach(), 1.0)
        p1, p2 = pretext.predictor(z1), pretext.predictor(z2)
        loss = (_byol(p1, t2) + _byol(p2, t1)).mean()
        return loss, correct

    @torch.no_grad()
    def _update_target(self, model, ctx) -> None:
        """BYOL's moving average, once per optimizer step (at its first batch, after the last step)."""
        trainer = ctx.trainer
        if trainer.global_step == 0 or trainer.batch_in_epoch % trainer.cfg.accumulate:
            return
        pretext, keep = model.pretext, self.config.momentum
        online, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        for target, source in ((pretext.target_encoder, ""), (pretext.target_projector, "pretext.projector.")):
            names = [name for name, _ in target.named_parameters()]
            torch._foreach_lerp_([p for _, p in target.named_parameters()],
                                 [online[source + name] for name in names], 1 - keep)
            for name, buffer in target.named_buffers():
                buffer.copy_(buffers[source + name])  # batch-norm statistics follow the online network

    def training_step(self, model, batch, ctx) -> StepOutput:
        x, _ = batch
        if self.config.method == "byol":
            self._update_target(model, ctx)
        v1, v2 = self.views(x, view_seed(self.train_cfg, ctx))
        loss, correct = self._losses(model, v1, v2)
        return StepOutput(loss, len(x), None, {"pair_accuracy": correct.float().sum() / 2})

    def evaluation_step(self, model, batch) -> StepOutput:
        """Views contrasted in groups of ``train.batch_size``, as in training: the loss and the pair
        accuracy depend on how many candidates there are, so they compare only at one group size."""
        x, _ = batch
        size = self.train_cfg.batch_size
        losses, counts, correct = [], [], []
        for start in range(0, len(x) - 1, size):
            group = x[start:start + size]
            if len(group) < 2:  # one sample has no other view to tell from its partner
                break
            v1, v2 = self.views(group, EVAL_SEED + start)
            loss, hits = self._losses(model, v1, v2)
            losses.append(loss * len(group))
            counts.append(len(group))
            correct.append(hits)
        if not counts:
            return StepOutput(torch.zeros(()), 0, torch.zeros(0))
        return StepOutput(torch.stack(losses).sum() / sum(counts), sum(counts), torch.cat(correct))

    def predict(self, outputs):
        raise predict_error("contrastive")

    def evaluator(self, eval_cfg):
        return MeanEvaluator("pair_accuracy", "views")


def _byol(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target) per sample: the squared distance of the two unit vectors."""
    return 2 - 2 * F.cosine_similarity(prediction.float(), target.float(), dim=1)
