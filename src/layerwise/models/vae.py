"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

The encoder gives a diagonal Gaussian q(z|x) = N(mu, exp(logvar)); a latent is drawn with the
reparameterisation z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), so gradients flow through the
sample; the decoder gives the parameters of p(x|z) under a standard normal prior p(z). Training
maximises the ELBO, E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)) (beta = 1: Kingma & Welling; beta > 1:
Higgins et al. 2017).

Likelihoods: ``bernoulli`` on pixel intensities in [0, 1] (the decoder gives logits; the task turns
the normalised batch back into pixels), ``gaussian`` on standardised features (the decoder gives the
mean; one learned log-variance per input value).

Contract: ``forward_features(x)`` is the posterior mean ``mu`` (B, latent); ``head`` is a linear
read-out of it that the vae task does not train (so ``forward(x)`` has the contract's shape).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..data.kinds import input_kind
from . import LayerwiseModel, register_family
from .abilities import check_sample_options
from .autoencoder import Activation, Decoder, Encoder, _check_input, _draw_device

__all__ = ["VAE", "ELBOTerms", "VAEConfig"]

LOG_2PI = math.log(2 * math.pi)


class VAEConfig(ModelConfig):
    family: Literal["vae"] = "vae"
    architecture: Literal["dense", "conv"] = Field("dense", description="dense (images or tabular) or conv (images)")
    hidden: list[PositiveInt] = Field([256, 128], description="dense: width of each encoder layer (the decoder mirrors them)")
    channels: list[PositiveInt] = Field([16, 32], description="conv: channels of each stride-2 encoder block (mirrored)")
    latent: int = Field(8, ge=1, description="dimension of the Gaussian latent z")
    activation: Activation = Field("relu", description="non-linearity")
    beta: float = Field(1.0, gt=0, description="weight of the KL term (1: the ELBO; > 1: beta-VAE)")
    likelihood: Literal["auto", "bernoulli", "gaussian"] = Field(
        "auto", description="p(x|z): bernoulli on pixels in [0, 1], gaussian on standardised features; "
                            "auto: bernoulli for images, gaussian otherwise")
    binarize: bool = Field(
        False, description="bernoulli: score stochastically binarised pixels (a fresh draw per training batch, "
                           "a fixed draw for evaluation), as in the binarised-MNIST literature")


class ELBOTerms(NamedTuple):
    """Per-sample terms, nats: ``recon`` = -log p(x|z) (one z), ``kl`` = KL(q(z|x) || p(z))."""

    recon: torch.Tensor  # (B,)
    kl: torch.Tensor  # (B,)

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon + self.kl)


@register_family("vae")
class VAE(LayerwiseModel):
    """Gaussian-latent variational autoencoder: encode to (mu, logvar), sample, decode."""

    accepts = frozenset({"image", "tabular"})
    Config = VAEConfig
    implies_task: ClassVar[str] = "vae"

    def __init__(self, config: VAEConfig, spec):
        super().__init__(config, spec)
        _check_input("vae", config.architecture, spec)
        self.likelihood = config.likelihood if config.likelihood != "auto" else (
            "bernoulli" if input_kind(spec).picture else "gaussian")
        if self.likelihood == "bernoulli" and not input_kind(spec).picture:
            raise ModelError("model.likelihood: 'bernoulli' models pixels in [0, 1] and needs image inputs; "
                             "use likelihood: gaussian for tabular data")
        self.encoder = Encoder(spec, config.architecture, config.hidden, config.channels, 2 * config.latent,
                               config.activation)  # (mu, logvar) side by side
        self.decoder = Decoder(spec, self.encoder, config.hidden, config.channels, config.latent, config.activation)
        if config.binarize and self.likelihood != "bernoulli":
            raise ModelError("model.binarize: binarised pixels need likelihood: bernoulli; drop binarize or "
                             "set likelihood: bernoulli")
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(*spec.input_shape))  # log sigma of p(x|z), per input value
        self.head = nn.Linear(config.latent, spec.num_outputs)  # contract read-out, see the module docstring

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, *input_shape) -> (mu, logvar), each (B, latent)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # exp() stays finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, *input_shape): pixel logits (bernoulli) or standardised means (gaussian)."""
        return self.decoder(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=_draw_device(mu, generator), dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps.to(mu.device)

    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z): pixel intensities in [0, 1] (bernoulli) or standardised features (gaussian)."""
        return torch.sigmoid(decoded) if self.likelihood == "bernoulli" else decoded

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The code of an input: the posterior mean mu (B, latent), deterministic (LatentEncoder)."""
        return self.encode(x)[0]

    sample_options: ClassVar[tuple[str, ...]] = ()
    sample_classes: ClassVar[int] = 0  # one prior for every class

    @property
    def sample_units(self) -> str:
        """Bernoulli means are pixel intensities in [0, 1]; Gaussian ones standardised features."""
        return "pixels" if self.likelihood == "bernoulli" else "input"

    @torch.no_grad()
    def sample(self, n: int, *, labels: Any = None, generator: torch.Generator | None = None,
               **options: Any) -> torch.Tensor:
        """``n`` draws of the mean of p(x|z), z ~ N(0, I): (n, *input_shape), units as in :meth:`mean`
        (the :class:`~layerwise.models.abilities.Sampler` ability; an unconditional model: no labels)."""
        if labels is not None:
            raise ModelError("labels: a VAE is not conditional; it samples every class from one prior")
        check_sample_options("vae", options, self.sample_options)
        device = self.head.weight.device
        z = torch.randn((n, self.config.latent), generator=generator, device=generator.device if generator else device)
        return self.mean(self.decode(z.to(device)))  # (n, *input_shape)

    def terms(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """Per-sample -log p(target|z) with one reparameterised z, and the closed-form KL, in nats.

        ``x`` is the normalised input the encoder reads; ``target`` the value the likelihood scores:
        pixels in [0, 1] (bernoulli) or the standardised features themselves (gaussian)."""
        mu, logvar = self.encode(x)
        decoded = self.decode(self.reparameterize(mu, logvar, generator))
        if self.likelihood == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(decoded.float(), target.float(), reduction="none")
        else:
            log_scale = self.log_scale.float()
            recon = 0.5 * LOG_2PI + log_scale + 0.5 * ((target.float() - decoded.float()) * torch.exp(-log_scale)) ** 2
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(1)
        return ELBOTerms(recon.flatten(1).sum(1), kl)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]  # (B, latent): the posterior mean
