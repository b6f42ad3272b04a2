"""Recurrent families (rnn, lstm, gru) and RWKV: the step-by-step form equals the whole-sequence form,
long sequences stay finite, bidirectional pooling uses both final states, and each family learns."""

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

RECURRENT = ["rnn", "lstm", "gru"]


# -- RWKV ------------------------------------------------------------------------------------


def _rwkv(spec: DataSpec, **config):
    torch.manual_seed(0)
    model = build_model(FAMILIES.get("rwkv").Config(width=32, **config), spec).eval()
    with torch.no_grad():  # random decays and bonuses, far from the initialization's pattern
        for block in model.blocks:
            block.att.time_decay.normal_(0.0, 2.0)
            block.att.time_first.normal_(0.0, 2.0)
    return model


@pytest.mark.parametrize("kind", ["sequence", "tokens"])
def test_rwkv_parallel_and_recurrent_forms_agree(kind):
    spec = sequence_spec(kind, 256)
    model = _rwkv(spec)
    x = sequence_inputs(spec, 3)
    with torch.no_grad():
        parallel = model.forward_sequence(x)
        recurrent = run_steps(model, x)[0]
    assert parallel.shape == (3, 256, 32)
    assert (parallel - recurrent).abs().max().item() <= 1e-4
    # the pooled features are the last position of the same sequence
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), parallel[:, -1])


def test_rwkv_wkv_chunking_does_not_change_the_result():
    from layerwise.models.rwkv import wkv_parallel

    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 100, 8, generator=gen) * 5, torch.randn(2, 100, 8, generator=gen)
    w, u = torch.rand(8, generator=gen) * 3, torch.randn(8, generator=gen)
    whole, _ = wkv_parallel(w, u, k, v, chunk=100)
    for chunk in (1, 7, 32):
        assert torch.allclose(wkv_parallel(w, u, k, v, chunk=chunk)[0], whole, atol=1e-5)


def test_rwkv_long_sequence_with_large_inputs_is_finite():
    spec = sequence_spec("sequence", 2048)
    model = _rwkv(spec, pooling="mean")
    model.train()
    x = sequence_inputs(spec, 2, scale=1e4)
    out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


# -- rnn, lstm, gru ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequence", "tokens"])
@pytest.mark.parametrize("family", RECURRENT)
def test_recurrent_step_equals_forward_sequence(family, kind):
    torch.manual_seed(0)
    spec = sequence_spec(kind, 20)
    model = build_model(FAMILIES.get(family).Config(hidden=16, embedding=8, layers=2), spec).eval()
    x = sequence_inputs(spec, 3)
    with torch.no_grad():
        sequence = model.forward_sequence(x)
        assert sequence.shape == (3, 20, 16)
        assert torch.allclose(run_steps(model, x)[0], sequence, atol=1e-5)
        assert torch.allclose(model.forward_features(x), sequence[:, -1])


def test_rnn_relu_nonlinearity_reaches_the_cell():
    spec = sequence_spec("sequence", 5)
    model = build_model(FAMILIES.get("rnn").Config(nonlinearity="relu"), spec)
    assert model.rnn.nonlinearity == "relu"
    with pytest.raises(ValueError):  # only the Elman cell has a choice of non-linearity
        FAMILIES.get("lstm").Config(nonlinearity="relu")


def test_bidirectional_last_pooling_uses_both_final_states():
    torch.manual_seed(0)
    spec = sequence_spec("sequence", 15)
    model = build_model(FAMILIES.get("lstm").Config(hidden=8, embedding=6, layers=2, bidirectional=True), spec).eval()
    x = sequence_inputs(spec, 4)
    with torch.no_grad():
        features = model.forward_features(x)
        _, (h_n, _) = model.rnn(model.inputs(x))  # h_n: (layers * 2, B, hidden)
    expected = torch.cat([h_n[-2], h_n[-1]], dim=1)  # the top layer's forward and backward final states
    assert features.shape == (4, 16)
    assert torch.allclose(features, expected, atol=1e-6)
    with pytest.raises(ModelError, match="bidirectional"):
        model.init_state(4)


# -- every family learns, and builds through the registry --------------------------------------


def _sum_sign_task(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 1, generator=gen)
    return Split(x, (x.sum(dim=(1, 2)) > 0).long())  # class 1: the sequence sums to more than 0


@pytest.mark.parametrize("family, config", [
    ("rnn", {"hidden": 32, "layers": 1}), ("lstm", {"hidden": 32, "layers": 1}),
    ("gru", {"hidden": 32, "layers": 1}), ("rwkv", {"width": 32, "layers": 1, "pooling": "mean"}),
])
def test_family_learns_whether_a_sequence_sums_above_zero(family, config):
    spec = DataSpec(kind="sequence", input_shape=(8, 1), target="class", num_classes=2)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get(family).Config(**config), spec)
    train_cfg = TrainConfig(epochs=15, batch_size=32, lr=1e-2, progress=False, device="cpu")
    task = Classification(spec, train_cfg, None)
    train = BatchLoader(_sum_sign_task(512, 0), 32, shuffle=True)
    history = Trainer(model, task, train_cfg).fit(train)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    test = _sum_sign_task(256, 1)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy > 0.85, f"{family}: accuracy {accuracy:.2f}"


@pytest.mark.parametrize("family", RECURRENT + ["rwkv"])
@pytest.mark.parametrize("kind", ["sequence", "tokens"])
def test_build_model_passes_the_dry_run(family, kind):
    spec = sequence_spec(kind, 6)
    model = build_model(FAMILIES.get(family).Config(), spec)  # build_model runs the shape check
    assert model(spec.example_input(2)).shape == (2, spec.num_outputs)


def test_recurrent_families_refuse_images():
    image = DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=3)
    for family in RECURRENT + ["rwkv"]:
        with pytest.raises(ModelError, match=f"'{family}' does not accept image inputs"):
            build_model(FAMILIES.get(family).Config(), image)
