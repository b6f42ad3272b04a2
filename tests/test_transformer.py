"""The transformer family: KV-cache generation equals full recomputation, a causal model does not look
ahead, attention maps are probabilities (lower-triangular when causal), the family learns toy tasks,
and the language-model head reuses the embedding matrix."""

from __future__ import annotations

import pytest
import torch
from helpers import run_steps, sequence_inputs, sequence_spec

from layerwise import FAMILIES, ModelError
from layerwise.core.config import TrainConfig
from layerwise.data.loader import BatchLoader
from layerwise.data.spec import DataSpec, Split
from layerwise.models import build_model
from layerwise.tasks.classification import Classification
from layerwise.train import Trainer

TINY = {"width": 32, "heads": 4, "layers": 2}


def _model(spec: DataSpec, **config):
    torch.manual_seed(0)
    return build_model(FAMILIES.get("transformer").Config(**{**TINY, **config}), spec).eval()


# -- generation with a KV cache -----------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("kind", ["sequence", "tokens"])
def test_kv_cache_steps_equal_full_recomputation(kind, positions):
    spec = sequence_spec(kind, 40)
    model = _model(spec, causal=True, pooling="last", positions=positions, max_len=64)
    x = sequence_inputs(spec, 3)
    with torch.no_grad():
        full = model.forward_sequence(x)
        stepped, state = run_steps(model, x)
        assert state.position == x.shape[1]
        assert state.keys[0].shape == (3, model.config.heads, 40, model.config.width // model.config.heads)
        assert full.shape == (3, 40, 32)
        assert (full - stepped).abs().max().item() <= 1e-4
        assert torch.allclose(model.forward_features(x), full[:, -1])


def test_step_leaves_the_cache_it_was_given_unchanged():
    spec = sequence_spec("tokens", 5)
    model = _model(spec, causal=True, pooling="last")
    x = sequence_inputs(spec, 2)
    with torch.no_grad():
        _, state = model.step(x[:, 0], model.init_state(2))
        a, _ = model.step(x[:, 1], state)
        b, _ = model.step(x[:, 1], state)  # the same cache again: a branch of the generation
    assert state.position == 1 and state.keys[0].shape[2] == 1
    assert torch.equal(a, b)


def test_step_past_max_len_names_the_setting():
    spec = sequence_spec("tokens", 4)
    model = _model(spec, causal=True, pooling="last", max_len=4)
    x = sequence_inputs(spec, 2)
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(4):
            _, state = model.step(x[:, t], state)
        with pytest.raises(ModelError, match="model.max_len"):
            model.step(x[:, 0], state)
        with pytest.raises(ModelError, match="model.max_len"):  # whole sequences too
            model(sequence_inputs(sequence_spec("tokens", 5), 2))


def test_encoder_cannot_step():
    model = _model(sequence_spec("sequence", 6))
    with pytest.raises(ModelError, match="model.causal"):
        model.init_state(2)


# -- causality and attention maps ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequence", "tokens"])
def test_causal_model_does_not_look_ahead(kind):
    spec = sequence_spec(kind, 12)
    model = _model(spec, causal=True, pooling="last")
    x = sequence_inputs(spec, 2)
    changed = x.clone()
    t = 5
    changed[:, t + 1] = (x[:, t + 1] + 7) % spec.vocab_size if kind == "tokens" else x[:, t + 1] + 3.0
    with torch.no_grad():
        before, after = model.forward_sequence(x), model.forward_sequence(changed)
    assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-6)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:], atol=1e-4)
    encoder = _model(spec, pooling="mean")  # an encoder does look ahead
    with torch.no_grad():
        assert not torch.allclose(encoder.forward_sequence(x)[:, :t + 1],
                                  encoder.forward_sequence(changed)[:, :t + 1], atol=1e-4)


@pytest.mark.parametrize("causal, pooling, extra", [(True, "last", 0), (False, "mean", 0), (False, "cls", 1)])
def test_attention_maps_are_probabilities(causal, pooling, extra):
    spec = sequence_spec("tokens", 9)
    model = _model(spec, causal=causal, pooling=pooling, layers=3)
    with torch.no_grad():
        maps = model.attention_maps(sequence_inputs(spec, 2))
    T = 9 + extra  # a CLS token is one more position
    assert len(maps) == 3
    for probs in maps:
        assert probs.shape == (2, 4, T, T)
        assert torch.allclose(probs.sum(dim=-1), torch.ones(2, 4, T), atol=1e-5)
        assert (probs >= 0).all()
        if causal:
            assert torch.equal(probs, probs.tril())
            lower = torch.ones(T, T, dtype=torch.bool).tril()
            assert (probs[..., lower] > 0).all()  # every earlier position gets some attention


def test_explicit_attention_gives_the_same_outputs_as_the_fused_kernel():
    spec = sequence_spec("sequence", 7)
    for causal, pooling in [(True, "last"), (False, "cls")]:
        model = _model(spec, causal=causal, pooling=pooling)
        x = sequence_inputs(spec, 2)
        with torch.no_grad():
            h = model._embed(x)
            explicit = h
            for block in model.blocks:
                h = block(h)
                explicit, _ = block.forward_explicit(explicit)
        assert torch.allclose(h, explicit, atol=1e-5)


# -- configuration --------------------------------------------------------------------------------


def test_config_rejects_bad_combinations():
    Config = FAMILIES.get("transformer").Config
    with pytest.raises(ValueError, match="multiple of model.heads"):
        Config(width=30, heads=4)
    with pytest.raises(ValueError, match="'cls' needs causal: false"):
        Config(causal=True)  # the default pooling is cls
    with pytest.raises(ValueError):
        Config(positions="rotary")


@pytest.mark.parametrize("config", [{}, {"causal": True, "pooling": "last"}, {"positions": "sinusoidal"}])
@pytest.mark.parametrize("kind", ["sequence", "tokens"])
def test_build_model_passes_the_dry_run(kind, config):
    spec = sequence_spec(kind, 6)
    model = build_model(FAMILIES.get("transformer").Config(**config), spec)  # build_model runs the shape check
    assert model(spec.example_input(2)).shape == (2, spec.num_outputs)


def test_refuses_images():
    image = DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=3)
    with pytest.raises(ModelError, match="'transformer' does not accept image inputs"):
        build_model(FAMILIES.get("transformer").Config(), image)


def test_language_model_head_is_tied_to_the_embedding():
    spec = DataSpec(kind="tokens", input_shape=(8,), target="token", vocab_size=23)
    model = _model(spec, causal=True, pooling="last")
    assert model.head.weight is model.inputs.embed.weight  # the same Parameter
    with torch.no_grad():
        logits = model.forward_head(model.forward_sequence(sequence_inputs(spec, 2)))
    assert logits.shape == (2, 8, 23)
    untied = _model(spec, causal=True, pooling="last", tie_weights=False)
    assert untied.head.weight is not untied.inputs.embed.weight
    assert untied.forward_head(torch.zeros(2, 32)).shape == (2, 23)
    classifier = _model(sequence_spec("tokens", 8))  # not a language model: an ordinary head
    assert classifier.head.weight.shape == (2, 32) and classifier.head.bias is not None


def test_gpt2_initialization_scales_residual_projections():
    model = _model(sequence_spec("tokens", 8), layers=8, width=64)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.blocks])
    other = torch.cat([b.attn.c_attn.weight.flatten() for b in model.blocks])
    assert abs(other.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)


# -- the family learns ------------------------------------------------------------------------


def _sum_sign_task(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 1, generator=gen)
    return Split(x, (x.sum(dim=(1, 2)) > 0).long())  # class 1: the sequence sums to more than 0


def _token_three_task(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 10, (n, 8), generator=gen)
    # about 57% of random sequences hold a 3; replacing it in some of them balances the classes
    drop = torch.rand(n, generator=gen) < 0.12
    x[drop] = torch.where(x[drop] == 3, torch.full_like(x[drop], 4), x[drop])
    return Split(x, (x == 3).any(dim=1).long())  # class 1: token 3 appears


def _fit(model, spec: DataSpec, split: Split, epochs: int, lr: float) -> list[dict]:
    train_cfg = TrainConfig(epochs=epochs, batch_size=32, lr=lr, progress=False, device="cpu")
    task = Classification(spec, train_cfg, None)
    return Trainer(model, task, train_cfg).fit(BatchLoader(split, 32, shuffle=True))


def _accuracy(model, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return (model(split.x).argmax(1) == split.y).float().mean().item()


def test_encoder_learns_whether_a_sequence_sums_above_zero():
    spec = DataSpec(kind="sequence", input_shape=(8, 1), target="class", num_classes=2)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get("transformer").Config(width=32, heads=4, layers=1, pooling="cls"), spec)
    history = _fit(model, spec, _sum_sign_task(512, 0), epochs=15, lr=1e-2)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    accuracy = _accuracy(model, _sum_sign_task(256, 1))
    assert accuracy > 0.85, f"accuracy {accuracy:.2f}"


def test_causal_model_learns_whether_token_three_appears():
    spec = DataSpec(kind="tokens", input_shape=(8,), target="class", num_classes=2, vocab_size=10)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get("transformer").Config(width=32, heads=4, layers=1, causal=True,
                                                           pooling="last"), spec)
    history = _fit(model, spec, _token_three_task(512, 0), epochs=15, lr=3e-3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    accuracy = _accuracy(model, _token_three_task(256, 1))
    assert accuracy > 0.9, f"accuracy {accuracy:.2f}"
