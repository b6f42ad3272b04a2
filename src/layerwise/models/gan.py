"""Generative adversarial network in the DCGAN style (Radford, Metz & Chintala 2016, "Unsupervised
Representation Learning with Deep Convolutional Generative Adversarial Networks"; Goodfellow et al. 2014).

Images: the generator maps a latent ``z`` to a small (C0, h0, w0) map and doubles it with strided
transposed convolutions up to the input size; the discriminator mirrors it with strided
convolutions. The number of up/down-sampling stages is derived from the input shape (8x8 digits:
4x4 -> 8x8; 28x28 MNIST: 7x7 -> 14x14 -> 28x28). Tabular data gets the MLP variant.

Options: ``conditional`` (a class embedding concatenated to ``z`` in G and a projection term in D,
Miyato & Koyama 2018), ``spectral_norm`` on every D layer (Miyato et al. 2018). The generator writes
samples directly in the model's input space (the normalised pixels the data pipeline produces), so
a sample can be fed to D or to any classifier of the same data; ``Preprocessing`` turns them back
into pixels.

The model contract (``forward == forward_head(forward_features)``) is served by the discriminator:
``forward_features`` are D's penultimate features and ``head`` an auxiliary classifier on them
(AC-GAN, Odena et al. 2017), trained on real images by the ``adversarial`` task.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..data.kinds import input_kind
from . import LayerwiseModel, register_family
from .abilities import check_sample_options

__all__ = ["GAN", "GANConfig"]


class GANConfig(ModelConfig):
    family: Literal["gan"] = "gan"
    variant: Literal["auto", "conv", "mlp"] = Field("auto", description="conv (DCGAN) for images, mlp for tabular; "
                                                                        "auto picks by the input kind")
    latent: int = Field(64, ge=1, description="size of the noise vector z")
    channels: list[PositiveInt] = Field([64, 32], min_length=1, description="conv variant: G channels from the smallest map "
                                                                    "up (D mirrors them); one upsampling per extra entry")
    hidden: list[PositiveInt] = Field([128, 128], min_length=1, description="mlp variant: hidden widths of G and D")
    conditional: bool = Field(False, description="class-conditional G and D (class embedding / projection)")
    spectral_norm: bool = Field(False, description="spectral normalisation on every discriminator layer")
    loss: Literal["non_saturating", "hinge"] = Field("non_saturating", description="adversarial loss")
    aux_weight: float = Field(1.0, ge=0, description="weight of D's auxiliary class loss on real inputs "
                                                     "(0: no classifier head training)")


def _upsampling_stages(height: int, width: int, wanted: int) -> int:
    """How many times the map can be halved (exactly, staying >= 3 pixels) up to ``wanted``."""
    stages = 0
    while (stages < wanted and height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= 3):
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


class ConvGenerator(nn.Module):
    """z (B, latent [+ emb]) -> Linear -> (C0, h0, w0) -> [ConvT 4x4 stride 2, BN, ReLU] x stages -> conv 3x3."""

    def __init__(self, in_features: int, channels: list[int], out_shape: tuple[int, int, int], stages: int):
        super().__init__()
        out_ch, height, width = out_shape
        self.h0, self.w0 = height >> stages, width >> stages
        widths = channels[: stages + 1]
        self.c0 = widths[0]
        self.project = nn.Sequential(nn.Linear(in_features, self.c0 * self.h0 * self.w0, bias=False),
                                     nn.BatchNorm1d(self.c0 * self.h0 * self.w0), nn.ReLU())
        blocks: list[nn.Module] = []
        for c_in, c_out in pairwise(widths):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU()]
        # no tanh: samples live in the normalised input space, which is not bounded to [-1, 1]
        blocks.append(nn.Conv2d(widths[-1], out_ch, 3, padding=1))
        self.body = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, self.c0, self.h0, self.w0))  # (B, C, H, W)


class ConvDiscriminatorBody(nn.Module):
    """(B, C, H, W) -> conv 3x3 -> [conv 4x4 stride 2, LeakyReLU] x stages -> flattened features."""

    def __init__(self, in_shape: tuple[int, int, int], channels: list[int], stages: int, sn):
        super().__init__()
        in_ch, height, width = in_shape
        widths = list(reversed(channels[: stages + 1]))  # D widens as the map shrinks
        layers: list[nn.Module] = [sn(nn.Conv2d(in_ch, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for c_in, c_out in pairwise(widths):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.out_features = widths[-1] * (height >> stages) * (width >> stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _mlp(widths: list[int], act: type[nn.Module], sn=lambda m: m, norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in pairwise(widths):
        layers.append(sn(nn.Linear(a, b, bias=not norm)))
        if norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(act(0.2) if act is nn.LeakyReLU else act())
    return nn.Sequential(*layers)


def _projection(classes: int, features: int) -> nn.Embedding:
    """The class embedding of the projection term, at the scale of the critic's own weights
    (U(±1/sqrt(features)), nn.Linear's default). nn.Embedding's N(0, 1) would start <embed(y), features>
    about sqrt(features) times larger than the real/fake logit (x80 for MNIST's 6,272 features)."""
    embedding = nn.Embedding(classes, features)
    bound = 1 / math.sqrt(features)
    nn.init.uniform_(embedding.weight, -bound, bound)
    return embedding


@register_family("gan")
class GAN(LayerwiseModel):
    """DCGAN generator/discriminator for images, an MLP pair for tabular data; trained adversarially."""

    accepts = frozenset({"image", "tabular"})
    Config = GANConfig
    implies_task: ClassVar[str] = "adversarial"

    def __init__(self, config: GANConfig, spec):
        super().__init__(config, spec)
        variant = config.variant
        if variant == "auto":
            variant = "conv" if input_kind(spec).picture else "mlp"
        if variant == "conv" and not input_kind(spec).picture:
            raise ModelError(f"model.variant: 'conv' needs image inputs, but the data is {spec.kind}; use 'mlp' or 'auto'")
        if config.conditional and not spec.num_classes:
            raise ModelError("model.conditional: a conditional GAN needs class labels, but this data has none; "
                             "set model.conditional: false")
        self.variant = variant
        self.num_classes = spec.num_classes or 0
        sn = nn.utils.parametrizations.spectral_norm if config.spectral_norm else (lambda m: m)
        # G's class code is as wide as a one-hot label, not as wide as z: a 64-wide code next to a 64-wide
        # z let the MNIST generator encode each class in the code alone and ignore z, so every sample
        # of a class came out the same (within-class pixel spread 0.02 against the data's 0.14); with
        # 10 numbers the spread stayed at 0.12
        emb = self.num_classes if config.conditional else 0
        self.class_embed = nn.Embedding(self.num_classes, emb) if config.conditional else None
        if variant == "conv":
            _, height, width = spec.input_shape
            stages = _upsampling_stages(height, width, len(config.channels) - 1)
            self.generator = ConvGenerator(config.latent + emb, config.channels, tuple(spec.input_shape), stages)
            self.disc = ConvDiscriminatorBody(tuple(spec.input_shape), config.channels, stages, sn)
            features = self.disc.out_features
        else:
            width = 1
            for s in spec.input_shape:
                width *= s
            self.generator = nn.Sequential(_mlp([config.latent + emb, *config.hidden], nn.ReLU, norm=True),
                                           nn.Linear(config.hidden[-1], width), nn.Unflatten(1, tuple(spec.input_shape)))
            self.disc = nn.Sequential(nn.Flatten(), _mlp([width, *config.hidden], nn.LeakyReLU, sn))
            features = config.hidden[-1]
        self.critic = sn(nn.Linear(features, 1))  # real/fake logit
        # projection discriminator: + <embed(y), features> makes D judge "real *for this class*"
        self.projection = sn(_projection(self.num_classes, features)) if config.conditional else None
        self.head = nn.Linear(features, spec.num_outputs)  # auxiliary classifier (AC-GAN)

    # -- the contract: D's features and its class head -----------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.disc(x)  # (B, F)

    # -- the two players -----------------------------------------------------------------------
    def sample_latent(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.latent, generator=generator).to(device or self.head.weight.device)

    def _labels(self, labels, n: int, device) -> torch.Tensor | None:
        if not self.config.conditional:
            if labels is not None:
                raise ModelError("labels: this GAN is not conditional; train with model.conditional: true to "
                                 "generate a chosen class")
            return None
        if labels is None:
            return torch.arange(n, device=device) % self.num_classes  # every class in turn
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ModelError(f"labels: expected {n} class ids in [0, {self.num_classes}); "
                             f"received {labels.numel()} in [{int(labels.min())}, {int(labels.max())}]")
        return labels

    def generate_from(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """G(z [, y]): (B, latent) -> samples in the input space (B, *input_shape)."""
        if self.class_embed is not None:
            z = torch.cat([z, self.class_embed(labels)], dim=1)
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """D(x [, y]): the real/fake logit (B,) and the auxiliary class logits (B, num_outputs)."""
        features = self.forward_features(x)
        logit = self.critic(features).squeeze(1)
        if self.projection is not None:
            logit = logit + (self.projection(labels) * features).sum(1)
        return logit, self.head(features)

    # -- the Sampler ability -------------------------------------------------------------------
    sample_options: ClassVar[tuple[str, ...]] = ()
    sample_units: ClassVar[str] = "input"

    @property
    def sample_classes(self) -> int:
        return self.num_classes if self.config.conditional else 0

    @torch.no_grad()
    def sample(self, n: int, *, labels: Any = None, generator: torch.Generator | None = None,
               **options: Any) -> torch.Tensor:
        """``n`` samples G(z [, y]) in the model's input space (normalised images / tabular rows);
        ``labels``: one class id or one per sample (conditional models; default every class in turn)."""
        if n < 1:
            raise ModelError(f"n: the number of samples must be at least 1; received {n}")
        check_sample_options("gan", options, self.sample_options)
        device = self.head.weight.device
        was_training = self.training
        self.eval()  # batch norm uses its running statistics: a sample does not depend on its batch
        try:
            return self.generate_from(self.sample_latent(n, device, generator), self._labels(labels, n, device))
        finally:
            self.train(was_training)

    def generate(self, n: int, labels=None, seed: int | None = None) -> torch.Tensor:
        """:meth:`sample` with a seed instead of a generator.

        >>> images = model.generate(16, labels=3)            # doctest: +SKIP
        """
        return self.sample(n, labels=labels, generator=None if seed is None else torch.Generator().manual_seed(seed))
