"""What a model can do beyond ``forward``: small protocols, one signature each.

A family declares an ability by implementing its methods; nothing registers it twice. Every list
of "which families (or runs) can do X" is derived from the registry with :func:`families_with`,
so a new family with a ``sample`` method is a generator everywhere (``layerwise generate``,
``layerwise quality``, the ``synthetic`` data source) without touching those files.

========================  =====================================================  ======================
ability                   methods                                                 families today
========================  =====================================================  ======================
:class:`Sampler`          ``sample(n, *, labels=None, generator=None, **opts)``  vae, gan, diffusion
:class:`LatentEncoder`    ``encode_latent(x) -> (B, latent)``, ``decode(z)``     autoencoder, vae
:class:`Stepper`          ``init_state(b)``, ``step(x_t, state)``,               recurrent, mingru,
                          ``forward_sequence(x)``                                minlstm, rwkv,
                                                                                  causal transformer
:class:`AttentionMaps`    ``attention_maps(x) -> [(B, heads, T, T)]``            transformer, vit,
                                                                                  ft_transformer
========================  =====================================================  ======================

The contract tests (tests/test_abilities.py) run over every registered family that has the
ability, so a new family is checked against the signature as soon as it exists.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ..core.errors import ModelError

__all__ = ["ABILITIES", "AttentionMaps", "LatentEncoder", "Sampler", "Stepper", "check_sample_options", "families_with",
           "has_ability"]


@runtime_checkable
class Sampler(Protocol):
    """Draws samples from the learned distribution.

    ``sample(n, *, labels=None, generator=None, **options)`` returns (n, *input_shape) in
    :attr:`sample_units`: ``"input"``, the model's own (normalised) input space, or ``"pixels"``,
    intensities in [0, 1] (a Bernoulli VAE's means). ``labels``: one class id or one per sample
    (conditional models; others refuse them). ``generator``: a seeded ``torch.Generator``, so the
    same seed gives the same samples. ``options``: the family's own (``steps``, ``guidance``...),
    named in :attr:`sample_options`; any other is a ModelError. :attr:`sample_classes`: how many
    classes ``labels`` may name (0: unconditional).
    """

    sample_options: ClassVar[tuple[str, ...]]

    @property
    def sample_classes(self) -> int:
        """Classes a sample can be conditioned on (0: an unconditional model)."""

    def sample(self, n: int, *, labels: Any = None, generator: torch.Generator | None = None,
               **options: Any) -> torch.Tensor: ...

    @property
    def sample_units(self) -> str: ...


@runtime_checkable
class LatentEncoder(Protocol):
    """Maps inputs to a latent code and back: ``encode_latent(x)`` (B, latent), deterministic (a VAE
    gives its posterior mean), and ``decode(z)``."""

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Stepper(Protocol):
    """Runs a sequence one position at a time, carrying a state (a recurrent state or a KV cache),
    so that generating a token costs one step: ``step`` at position t equals ``forward_sequence``'s
    output t."""

    def init_state(self, batch_size: int) -> Any: ...

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AttentionMaps(Protocol):
    """Exposes its attention: ``attention_maps(x)`` gives each layer's probabilities (B, heads, T, T)."""

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]: ...


ABILITIES: dict[str, type] = {"sample": Sampler, "encode_latent": LatentEncoder, "step": Stepper,
                              "attention": AttentionMaps}


def has_ability(model_or_class: Any, ability: type) -> bool:
    """Whether a model (or a family class) implements every method of ``ability``."""
    methods = [name for name in ability.__dict__ if not name.startswith("_") and callable(getattr(ability, name))]
    return all(callable(getattr(model_or_class, name, None)) for name in methods)


def check_sample_options(family: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """A ModelError naming an option this family's ``sample`` does not take, and which families do."""
    for name, value in options.items():
        if name not in allowed and value is not None:
            others = [f for f in families_with(Sampler) if name in getattr(_family_class(f), "sample_options", ())]
            where = f" ({', '.join(others)} only)" if others else ""
            raise ModelError(f"sample: '{family}' takes no option '{name}'{where}; it takes "
                             f"{', '.join(allowed) or 'labels and generator only'}")


def _family_class(name: str) -> type:
    from . import FAMILIES

    return FAMILIES.get(name)


def families_with(ability: type) -> list[str]:
    """Names of the registered families whose class implements ``ability`` (for messages and lists)."""
    from . import FAMILIES

    return [name for name, cls in FAMILIES.items() if has_ability(cls, ability)]
