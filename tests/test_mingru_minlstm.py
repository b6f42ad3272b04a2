"""minGRU and minLSTM: the parallel (log-space scan) and recurrent forms agree, stay finite on long
sequences, pass gradients and learn; plus the scan and its helpers on their own."""

from __future__ import annotations

import pytest
import torch
from helpers import run_steps

from layerwise.core.config import TrainConfig
from layerwise.data.loader import BatchLoader
from layerwise.data.spec import DataSpec, Split
from layerwise.models import FAMILIES, build_model
from layerwise.models._scan import g, log_g, parallel_scan_log
from layerwise.tasks.classification import Classification
from layerwise.train import Trainer

FAMILY_NAMES = ["mingru", "minlstm"]
SEQUENCE = DataSpec(kind="sequence", input_shape=(256, 3), target="class", num_classes=3)
TOKENS = DataSpec(kind="tokens", input_shape=(256,), target="numeric", num_targets=2, vocab_size=17)


def _model(family: str, spec: DataSpec, **overrides):
    torch.manual_seed(0)
    config = FAMILIES.get(family).Config(**{"hidden": 24, "layers": 2, "dropout": 0.0, **overrides})
    return build_model(config, spec)


def _inputs(spec: DataSpec, batch: int = 3, length: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    length = length or spec.input_shape[0]
    if spec.kind == "tokens":
        return torch.randint(0, spec.vocab_size, (batch, length), generator=gen)
    return torch.randn(batch, length, *spec.input_shape[1:], generator=gen)


# -- the scan and its helpers ------------------------------------------------------------------


def test_g_is_positive_continuous_and_log_g_matches():
    x = torch.linspace(-30, 30, 2001)
    assert (g(x) > 0).all()
    assert torch.allclose(g(torch.tensor([0.0, 1.0, -1.0])), torch.tensor([0.5, 1.5, torch.sigmoid(torch.tensor(-1.0))]))
    assert torch.allclose(log_g(x), g(x).log(), atol=1e-5)
    x.requires_grad_(True)
    log_g(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_matches_the_loop(with_h0):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 300, 5, generator=gen) * 0.98 + 0.01
    b = torch.rand(2, 300, 5, generator=gen) + 0.01
    h0 = torch.rand(2, 5, generator=gen) + 0.1 if with_h0 else None
    h = torch.zeros(2, 5) if h0 is None else h0
    expected = []
    for t in range(300):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    got = parallel_scan_log(a.log(), b.log(), h0)
    assert torch.allclose(got, torch.stack(expected, 1), rtol=1e-4, atol=1e-5)


def test_scan_keeps_dtype_and_long_products_do_not_underflow():
    # a coefficient product of 0.5 ** 4096 underflows any float; the scan never forms it
    log_a = torch.full((1, 4096, 1), -0.693, dtype=torch.bfloat16)
    log_b = torch.zeros(1, 4096, 1, dtype=torch.bfloat16)
    h = parallel_scan_log(log_a, log_b)
    assert h.dtype == torch.bfloat16
    assert torch.isfinite(h).all()
    assert abs(h[0, -1, 0].item() - 2.0) < 0.02  # 1 / (1 - 0.5)


# -- the families ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("spec", [SEQUENCE, TOKENS], ids=["sequence", "tokens"])
def test_parallel_equals_recurrent(family, spec):
    model = _model(family, spec, expansion=1.5, mlp_ratio=2.0).eval()
    x = _inputs(spec)
    with torch.no_grad():
        parallel = model.forward_sequence(x)
        stepped = run_steps(model, x)[0]
    assert parallel.shape == (3, 256, 24)
    assert (parallel - stepped).abs().max().item() <= 1e-4
    # pooled features are the last (or mean) position of the same sequence
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), parallel[:, -1])


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("residual, norm", [(False, "none"), (True, "rms")])
def test_parallel_equals_recurrent_other_layouts(family, residual, norm):
    model = _model(family, SEQUENCE, residual=residual, norm=norm).eval()
    x = _inputs(SEQUENCE, length=64)
    with torch.no_grad():
        assert (model.forward_sequence(x) - run_steps(model, x)[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prefill_then_step_continues_the_sequence(family):
    model = _model(family, TOKENS).eval()
    x = _inputs(TOKENS, length=40)
    with torch.no_grad():
        full = model.forward_sequence(x)
        head, state = model.forward_sequence(x[:, :25], return_state=True)
        rest_parallel = model.forward_sequence(x[:, 25:], state=state)
        rest_stepped = run_steps(model, x[:, 25:], state)[0]
    assert torch.allclose(head, full[:, :25], atol=1e-5)
    assert (rest_parallel - full[:, 25:]).abs().max().item() <= 1e-4
    assert (rest_stepped - full[:, 25:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_long_sequence_is_finite_with_finite_gradients(family):
    model = _model(family, SEQUENCE, hidden=16)
    model.train()
    x = _inputs(SEQUENCE, batch=2, length=4096) * 3
    out = model.forward_sequence(x)
    assert torch.isfinite(out).all()
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the first step still influences the last output: gradients reach back through the scan
    x0 = x.clone().requires_grad_(True)
    model.forward_sequence(x0)[:, -1].sum().backward()
    assert x0.grad[:, 0].abs().sum() > 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_build_model_checks_shapes_and_refuses_images(family):
    spec = DataSpec(kind="tokens", input_shape=(7,), target="class", num_classes=4, vocab_size=9)
    model = build_model(FAMILIES.get(family).Config(hidden=8), spec)  # the dry run passed
    assert model(torch.randint(0, 9, (5, 7))).shape == (5, 4)
    assert model.num_features == 8
    from layerwise import ModelError

    image = DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=3)
    with pytest.raises(ModelError, match=f"'{family}' does not accept image inputs"):
        build_model(FAMILIES.get(family).Config(), image)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_learns_whether_the_sum_is_positive(family):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(640, 16, 1, generator=gen)
    y = (x.sum(dim=(1, 2)) > 0).long()
    spec = DataSpec(kind="sequence", input_shape=(16, 1), target="class", num_classes=2)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get(family).Config(hidden=16, layers=1, dropout=0.0), spec)
    cfg = TrainConfig(epochs=12, batch_size=32, lr=0.01, progress=False, device="cpu")
    task = Classification(spec, cfg, None)
    train = BatchLoader(Split(x[:512], y[:512]), 32, shuffle=True)
    Trainer(model, task, cfg, device=torch.device("cpu")).fit(train)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[512:]).argmax(1) == y[512:]).float().mean().item()
    assert accuracy >= 0.9, accuracy
