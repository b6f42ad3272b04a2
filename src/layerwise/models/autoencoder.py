"""Autoencoder (Hinton & Salakhutdinov 2006, "Reducing the Dimensionality of Data with Neural
Networks"), with the denoising option of Vincent et al. 2008 ("Extracting and Composing Robust
Features with Denoising Autoencoders"): noise on the input during training, the clean input as target.

An encoder maps an input to a ``bottleneck`` code, a decoder maps the code back to the input's
shape. Dense (any input that flattens: images, tabular features) or convolutional (images).

Contract: ``forward_features(x)`` is the code (B, bottleneck); ``head`` is a linear read-out of the
code to ``spec.num_outputs`` that the reconstruction task does not train: it exists so the model
obeys the one model contract (``forward(x)`` of shape (B, num_outputs)). The reconstruction is
``reconstruct(x)``, ``decode(encode(x))``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from ..core.config import ModelConfig, Section
from ..core.errors import ModelError
from ..data.kinds import input_kind
from . import LayerwiseModel, register_family
from .layers import activation

__all__ = ["Autoencoder", "AutoencoderConfig", "Decoder", "DenoisingConfig", "Encoder", "corrupt"]

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu"]


class DenoisingConfig(Section):
    """Corrupt the input during training only; the target stays the clean input."""

    noise: Literal["gaussian", "mask"] = Field("gaussian", description="gaussian: add N(0, level²) noise (in "
                                               "normalised units); mask: zero each input value with probability level")
    level: float = Field(0.3, gt=0, description="noise standard deviation (gaussian) or masking probability (mask, < 1)")

    @model_validator(mode="after")
    def _mask_probability(self):
        if self.noise == "mask" and self.level >= 1:
            raise ValueError(f"level: a masking probability must be below 1; got {self.level}")
        return self


class AutoencoderConfig(ModelConfig):
    family: Literal["autoencoder"] = "autoencoder"
    architecture: Literal["dense", "conv"] = Field("dense", description="dense (images or tabular) or conv (images)")
    hidden: list[PositiveInt] = Field([128], description="dense: width of each encoder layer (the decoder mirrors them)")
    channels: list[PositiveInt] = Field([16, 32], description="conv: channels of each stride-2 encoder block (mirrored)")
    bottleneck: int = Field(16, ge=1, description="size of the code between encoder and decoder")
    activation: Activation = Field("relu", description="non-linearity")
    denoising: DenoisingConfig | None = Field(None, description="train as a denoising autoencoder: {noise, level}")


def corrupt(x: torch.Tensor, cfg: DenoisingConfig | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noisy input a denoising autoencoder sees in training (``x`` itself when ``cfg`` is None)."""
    if cfg is None:
        return x
    if cfg.noise == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=_draw_device(x, generator), dtype=x.dtype)
        return x + cfg.level * noise.to(x.device)
    keep = torch.rand(x.shape, generator=generator, device=_draw_device(x, generator)) >= cfg.level
    return x * keep.to(x.device, x.dtype)


def _draw_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Random numbers are drawn where the generator lives (a CPU generator for a CUDA batch)."""
    return generator.device if generator is not None else x.device


def _check_input(family: str, architecture: str, spec) -> None:
    if spec.categorical:
        raise ModelError(f"model.family: '{family}' reconstructs numeric inputs; embedded categorical columns cannot "
                         f"be reconstructed; set data.categorical_encoding: onehot")
    if architecture == "conv" and not input_kind(spec).picture:
        raise ModelError(f"model.architecture: 'conv' needs image inputs, the data gives {spec.kind}; "
                         f"use architecture: dense")


class Encoder(nn.Module):
    """Input (B, *input_shape) -> (B, out_features): dense layers, or stride-2 conv blocks then a linear layer."""

    def __init__(self, spec, architecture: str, hidden: list[int], channels: list[int], out_features: int, act: str):
        super().__init__()
        self.architecture = architecture
        layers: list[nn.Module] = []
        if architecture == "dense":
            width = 1
            for s in spec.input_shape:
                width *= s
            layers.append(nn.Flatten())
            for size in hidden:
                layers += [nn.Linear(width, size), activation(act)]
                width = size
            self.sizes: list[tuple[int, int]] = []
        else:
            c, h, w = spec.input_shape
            self.sizes = [(h, w)]  # spatial size before each block: the decoder upsamples back to them
            for ch in channels:
                layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1), activation(act)]
                c, h, w = ch, (h + 1) // 2, (w + 1) // 2
                self.sizes.append((h, w))
            layers.append(nn.Flatten())
            width = c * h * w
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class Decoder(nn.Module):
    """Code (B, latent) -> (B, *input_shape), mirroring an :class:`Encoder`; no output non-linearity."""

    def __init__(self, spec, encoder: Encoder, hidden: list[int], channels: list[int], latent: int, act: str):
        super().__init__()
        self.shape = tuple(spec.input_shape)
        layers: list[nn.Module] = []
        if encoder.architecture == "dense":
            width = latent
            for size in reversed(hidden):
                layers += [nn.Linear(width, size), activation(act)]
                width = size
            out = 1
            for s in self.shape:
                out *= s
            layers.append(nn.Linear(width, out))
        else:
            h, w = encoder.sizes[-1]
            self.start = (channels[-1], h, w)
            layers += [nn.Linear(latent, channels[-1] * h * w), activation(act), nn.Unflatten(1, self.start)]
            chans = list(reversed(channels))[1:] + [spec.input_shape[0]]
            c = channels[-1]
            # nearest upsampling to the encoder's exact sizes, then a 3x3 conv: odd sizes come back exactly
            for i, (size, ch) in enumerate(zip(reversed(encoder.sizes[:-1]), chans)):
                layers += [nn.Upsample(size=size, mode="nearest"), nn.Conv2d(c, ch, 3, padding=1)]
                if i < len(chans) - 1:
                    layers.append(activation(act))
                c = ch
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(z.shape[0], *self.shape)


@register_family("autoencoder")
class Autoencoder(LayerwiseModel):
    """Encoder to a bottleneck code and a mirrored decoder; optionally denoising."""

    accepts = frozenset({"image", "tabular"})
    Config = AutoencoderConfig
    implies_task: ClassVar[str] = "reconstruction"

    def __init__(self, config: AutoencoderConfig, spec):
        super().__init__(config, spec)
        _check_input("autoencoder", config.architecture, spec)
        self.encoder = Encoder(spec, config.architecture, config.hidden, config.channels, config.bottleneck,
                               config.activation)
        self.decoder = Decoder(spec, self.encoder, config.hidden, config.channels, config.bottleneck,
                               config.activation)
        self.head = nn.Linear(config.bottleneck, spec.num_outputs)  # contract read-out, see the module docstring

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_shape) -> (B, bottleneck)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, bottleneck) -> (B, *input_shape), in the normalised units the model reads."""
        return self.decoder(z)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The code of an input (B, bottleneck): the LatentEncoder ability."""
        return self.encode(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training-time input: noisy when ``denoising`` is set, else ``x``."""
        return corrupt(x, self.config.denoising, generator)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)  # (B, bottleneck)
