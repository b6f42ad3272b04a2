"""Abilities: one contract test per protocol, over every registered family that declares it.

A new family that implements ``sample`` (or ``encode_latent``, ``step``, ``attention_maps``) is
picked up here by the registry and held to the protocol's signature and meaning at once.
"""

from __future__ import annotations

import pytest
import torch
from helpers import run_steps

from layerwise import FAMILIES, ModelError
from layerwise.data.spec import DataSpec
from layerwise.models import build_model
from layerwise.models.abilities import (
    AttentionMaps,
    LatentEncoder,
    Sampler,
    Stepper,
    families_with,
    has_ability,
)
from layerwise.tasks import TASKS
from layerwise.tools.anomaly import score_tasks

SPECS = {
    "image": DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=3, class_names=["a", "b", "c"]),
    "tabular": DataSpec(kind="tabular", input_shape=(5,), target="class", num_classes=4),
    "sequence": DataSpec(kind="sequence", input_shape=(6, 3), target="class", num_classes=3),
    "tokens": DataSpec(kind="tokens", input_shape=(6,), target="token", vocab_size=11),
}


def _cases(ability: type) -> list[tuple[str, str]]:
    return [(family, kind) for family in families_with(ability) for kind in SPECS
            if kind in FAMILIES.get(family).accepts]


def _build(family: str, kind: str, **settings):
    torch.manual_seed(0)
    cls = FAMILIES.get(family)
    fields = cls.Config.model_fields
    config = cls.Config(**{k: v for k, v in settings.items() if k in fields})
    return build_model(config, SPECS[kind]).eval()


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_abilities_are_declared_by_the_families_we_expect():
    assert {"vae", "gan", "diffusion"} <= set(families_with(Sampler))
    assert {"autoencoder", "vae"} <= set(families_with(LatentEncoder))
    assert {"gru", "lstm", "mingru", "minlstm", "rwkv", "transformer"} <= set(families_with(Stepper))
    assert {"transformer", "vit"} <= set(families_with(AttentionMaps))
    assert not has_ability(FAMILIES.get("mlp"), Sampler) and not has_ability(FAMILIES.get("cnn"), Stepper)
    # task-level ability: anomaly scores, derived from the tasks' declarations
    assert score_tasks() == {name: cls.anomaly_score for name, cls in TASKS.items() if cls.anomaly_score}
    assert set(score_tasks()) == {"reconstruction", "vae"}


@pytest.mark.parametrize("family,kind", _cases(Sampler))
def test_sampler_contract(family, kind):
    model = _build(family, kind, timesteps=20, sample_steps=2)
    assert isinstance(model, Sampler) and model.sample_units in ("input", "pixels")
    x = model.sample(3, generator=_seeded(0))
    assert x.shape == (3, *SPECS[kind].input_shape) and torch.isfinite(x).all()
    assert torch.equal(x, model.sample(3, generator=_seeded(0)))  # same seed, same samples
    assert not torch.equal(x, model.sample(3, generator=_seeded(1)))
    if model.sample_units == "pixels":
        assert x.min() >= 0 and x.max() <= 1
    assert model.sample_classes == 0
    with pytest.raises(ModelError):
        model.sample(2, labels=1)  # unconditional: no labels
    with pytest.raises(ModelError, match="no option 'bogus'"):
        model.sample(2, bogus=3)


@pytest.mark.parametrize("family,kind", [c for c in _cases(Sampler)
                                         if "conditional" in FAMILIES.get(c[0]).Config.model_fields])
def test_conditional_sampler_contract(family, kind):
    model = _build(family, kind, conditional=True, timesteps=20, sample_steps=2)
    assert model.sample_classes == SPECS[kind].num_classes
    one = model.sample(4, labels=1, generator=_seeded(0))
    each = model.sample(4, labels=torch.tensor([1, 1, 1, 1]), generator=_seeded(0))
    assert one.shape == (4, *SPECS[kind].input_shape) and torch.allclose(one, each)


@pytest.mark.parametrize("family,kind", _cases(LatentEncoder))
def test_latent_encoder_contract(family, kind):
    model = _build(family, kind)
    x = torch.rand(4, *SPECS[kind].input_shape, generator=_seeded(0))
    z = model.encode_latent(x)
    assert z.dim() == 2 and z.shape[0] == 4
    assert torch.equal(z, model.encode_latent(x))  # deterministic: a VAE gives its posterior mean
    assert model.decode(z).shape == x.shape


@pytest.mark.parametrize("family,kind", [c for c in _cases(Stepper) if c[1] in ("tokens", "sequence")])
def test_stepper_contract(family, kind):
    model = _build(family, kind, causal=True, pooling="last", bidirectional=False)
    spec = SPECS[kind]
    x = (torch.randint(0, spec.vocab_size, (2, *spec.input_shape), generator=_seeded(0)) if kind == "tokens"
         else torch.randn(2, *spec.input_shape, generator=_seeded(0)))
    with torch.no_grad():
        whole = model.forward_sequence(x)
        stepped, _ = run_steps(model, x)
    assert stepped.shape == whole.shape
    assert torch.allclose(stepped, whole, atol=1e-4), (stepped - whole).abs().max()


@pytest.mark.parametrize("family,kind", _cases(AttentionMaps))
def test_attention_maps_contract(family, kind):
    model = _build(family, kind)
    spec = SPECS[kind]
    x = (torch.randint(0, spec.vocab_size, (2, *spec.input_shape), generator=_seeded(0)) if kind == "tokens"
         else torch.randn(2, *spec.input_shape, generator=_seeded(0)))
    with torch.no_grad():
        maps = model.attention_maps(x)
    assert maps and all(m.dim() == 4 and m.shape[0] == 2 and m.shape[-1] == m.shape[-2] for m in maps)
    for m in maps:  # each query's attention is a probability distribution over the keys
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)
