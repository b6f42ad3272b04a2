"""The diffusion family and task: shapes, schedules, samplers against an exact denoiser, EMA, guidance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import layerwise
from layerwise import ModelError
from layerwise.data.spec import DataSpec
from layerwise.models import build_model
from layerwise.models.diffusion import Diffusion, DiffusionConfig, make_betas

DIGITS = DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=10,
                  class_names=[str(i) for i in range(10)])
MNIST = DataSpec(kind="image", input_shape=(1, 28, 28), target="class", num_classes=10,
                 class_names=[str(i) for i in range(10)])
POINTS = DataSpec(kind="tabular", input_shape=(2,), target="class", num_classes=2)
TINY = {"channels": [8, 16], "time_dim": 8, "timesteps": 50}


def _model(spec, **kw) -> Diffusion:
    torch.manual_seed(0)
    return build_model(DiffusionConfig(**{**TINY, **kw}), spec)


@pytest.mark.parametrize("spec", [DIGITS, MNIST, POINTS], ids=["digits", "mnist", "points"])
def test_shapes_of_loss_noise_and_samples(spec):
    model = _model(spec, conditional=True, hidden=[16])
    x = torch.randn(3, *spec.input_shape)
    labels = torch.tensor([0, 1, 1])
    assert model.diffusion_loss(x, labels).shape == (3,)
    t = torch.tensor([0, 10, 49])
    assert model.predict_noise(x, t, labels, guidance=2.0).shape == x.shape
    assert model(x).shape == (3, spec.num_outputs)
    for method in ("ddim", "ddpm"):
        out = model.sample(3, steps=4, method=method, labels=1, guidance=1.0)
        assert out.shape == (3, *spec.input_shape) and torch.isfinite(out).all()


def test_unet_resolutions_follow_the_input_size():
    # 8x8 halves once (8 -> 4); 28x28 twice (28 -> 14 -> 7)
    assert len(_model(DIGITS, channels=[8, 16, 32]).net.net.downsample) == 1
    assert len(_model(MNIST, channels=[8, 16, 32]).net.net.downsample) == 2


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [10, 1000])
def test_alphas_cumprod_decrease_inside_zero_one(schedule, timesteps):
    abar = torch.cumprod(1 - make_betas(schedule, timesteps), 0)
    assert abar.shape == (timesteps,)
    assert ((abar > 0) & (abar < 1)).all()
    assert (abar[1:] < abar[:-1]).all()


class GaussianOptimalDenoiser(nn.Module):
    """E[eps | x_t] for data ~ N(mu, S): sqrt(1 - a) (a S + (1 - a) I)^-1 (x_t - sqrt(a) mu), exact."""

    def __init__(self, abar, mu, cov):
        super().__init__()
        self.abar, self.mu, self.cov = abar.double(), mu.double(), cov.double()

    def forward(self, x, t, labels=None):
        a = self.abar[t][:, None, None]  # (B, 1, 1)
        eye = torch.eye(len(self.mu), dtype=torch.float64)
        c = a * self.cov + (1 - a) * eye  # (B, D, D)
        r = x.double() - a[:, :, 0].sqrt() * self.mu
        return ((1 - a[:, :, 0]).sqrt() * torch.linalg.solve(c, r)).to(x.dtype)


def test_ddim_full_steps_eta1_matches_ddpm_and_the_data():
    model = _model(POINTS, timesteps=200, schedule="cosine")
    mu = torch.tensor([2.0, -1.0])
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    model.ema = GaussianOptimalDenoiser(model.alphas_cumprod, mu, cov)  # sampling reads the EMA network
    n = 4000
    ddpm = model.sample(n, method="ddpm", generator=torch.Generator().manual_seed(1))
    ddim = model.sample(n, steps=200, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(2))
    # deterministic DDIM shrinks variance by about (pi / 2)^2 / steps (a first-order solver): 100 steps, ~2.5 %
    fast = model.sample(n, steps=100, method="ddim", eta=0.0, generator=torch.Generator().manual_seed(3))
    for samples in (ddpm, ddim, fast):
        assert torch.allclose(samples.mean(0), mu, atol=0.06)
        assert torch.allclose(torch.cov(samples.T), cov, atol=0.06)
    assert torch.allclose(ddpm.mean(0), ddim.mean(0), atol=0.06)
    assert torch.allclose(torch.cov(ddpm.T), torch.cov(ddim.T), atol=0.08)
    # with eta = 1 and every step, DDIM's update is DDPM's posterior step: the same draws give the same samples
    again = model.sample(n, steps=200, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(again, ddpm, atol=1e-4)


def test_clipping_x0_keeps_samples_in_the_data_range_and_is_exact_when_it_does_not_bind():
    model = _model(POINTS, timesteps=200, schedule="cosine")
    model.ema = GaussianOptimalDenoiser(model.alphas_cumprod, torch.tensor([2.0, -1.0]), torch.eye(2) * 0.3)
    for method in ("ddim", "ddpm"):
        free = model.sample(500, steps=50, method=method, generator=torch.Generator().manual_seed(4))
        wide = model.sample(500, steps=50, method=method, generator=torch.Generator().manual_seed(4), clip=(-1e6, 1e6))
        assert torch.allclose(free, wide, atol=1e-5)  # the recomputed noise estimate is the same one
        low, high = torch.tensor([1.5, -1.2]), torch.tensor([2.5, -0.8])
        tight = model.sample(500, steps=50, method=method, generator=torch.Generator().manual_seed(4),
                             clip=(low, high))
        # the last step (abar_prev = 1) returns the clipped x0 itself, with either sampler
        assert (tight >= low - 1e-6).all() and (tight <= high + 1e-6).all()


def test_image_samples_from_sample_run_stay_in_the_pixel_range(tmp_path):
    run = layerwise.train({"data": {"source": "builtin", "name": "digits", "limit": 100},
                           "model": {"family": "diffusion", **TINY, "timesteps": 20, "attention": False},
                           "train": {"epochs": 1, "progress": False}}, quiet=True, runs_dir=tmp_path)
    from layerwise.tools.generate import sample_run

    x = sample_run(run, 16, steps=5).x
    pixels = run.preprocessing.inputs.denormalize_pixels(x)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4  # one epoch, yet no blow-up: x0 is clipped


def test_guidance_zero_is_the_conditional_prediction():
    model = _model(DIGITS, conditional=True)
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 20, 40]), torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        cond = model.ema(x, t, labels)
        uncond = model.ema(x, t, None)
        assert torch.allclose(model.predict_noise(x, t, labels, guidance=0.0), cond)
        assert torch.allclose(model.predict_noise(x, t, labels, guidance=2.0), cond + 2.0 * (cond - uncond), atol=1e-5)


def test_digits_with_no_task_key_trains_with_ema(tmp_path):
    cfg = {"name": "diff", "data": {"source": "builtin", "name": "digits", "limit": 400},
           "model": {"family": "diffusion", **TINY, "timesteps": 100, "conditional": True, "ema_decay": 0.9},
           "train": {"epochs": 4, "batch_size": 32, "lr": 0.003, "progress": False}}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    assert run.config.task == "diffusion"
    history = [float(line.split(",")[3]) for line in (run.path / "history.csv").read_text().splitlines()[1:]]
    assert history[-1] < history[0]  # validation noise MSE (EMA weights) goes down
    model = layerwise.load_run(run.path).model
    # the EMA differs from the trained weights and was saved with the model
    diffs = [(e - p).abs().max() for e, p in zip(model.ema.parameters(), model.net.parameters())]
    assert max(diffs) > 1e-4
    # sampling uses the EMA weights: the same draws with those weights copied into the network agree
    ema_samples = model.sample(3, steps=5, labels=2, guidance=1.0, generator=torch.Generator().manual_seed(0))
    raw = model.sample(3, steps=5, labels=2, guidance=1.0, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert not torch.allclose(ema_samples, raw)
    model.net.load_state_dict(model.ema.state_dict())
    copied = model.sample(3, steps=5, labels=2, guidance=1.0, generator=torch.Generator().manual_seed(0), use_ema=False)
    # equal up to float summation order (samples after 5 guided steps reach magnitudes ~1e3)
    assert torch.allclose(ema_samples, copied, rtol=1e-4, atol=1e-3)
    # the checkpoint carries the EMA callback's state
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=False)
    assert state["callbacks"]["EMA"]["updates"] == state["global_step"] > 0  # one update per optimizer step


def test_errors_a_user_can_cause(tmp_path):
    with pytest.raises(ModelError, match="model.conditional: needs class labels"):
        build_model(DiffusionConfig(**TINY, conditional=True),
                    DataSpec(kind="tabular", input_shape=(2,), target="numeric", num_targets=1))
    model = _model(POINTS)
    with pytest.raises(ModelError, match="labels given to an unconditional model"):
        model.sample(2, labels=0)
    with pytest.raises(ModelError, match="steps must be between 1 and timesteps"):
        model.sample(2, steps=500)
    with pytest.raises(ModelError, match="task 'diffusion' needs a diffusion model"):
        layerwise.train({"data": {"source": "builtin", "name": "digits", "limit": 50}, "model": {"family": "cnn"},
                         "task": "diffusion", "train": {"epochs": 1, "progress": False}}, runs_dir=tmp_path, quiet=True)


def test_resume_continues_the_ema(tmp_path):
    cfg = {"name": "resume", "data": {"source": "builtin", "name": "digits", "limit": 200},
           "model": {"family": "diffusion", **TINY},
           "train": {"epochs": 1, "batch_size": 50, "scheduler": "none", "progress": False}}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    first = torch.load(run.path / "checkpoints" / "last.pt", weights_only=False)
    layerwise.train(resume=run.path, train__epochs=2, quiet=True)
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=False)
    # the update count went on from the checkpoint (a fresh callback would count only the new steps)
    assert state["global_step"] == 2 * first["global_step"]
    assert state["callbacks"]["EMA"]["updates"] == state["global_step"]
