"""Denoising diffusion models: DDPM (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models")
with linear or cosine noise schedules (Nichol & Dhariwal 2021, "Improved Denoising Diffusion
Probabilistic Models"), DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models")
and classifier-free guidance (Ho & Salimans 2021).

The network predicts the noise ``eps`` added to a clean input ``x0``:
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``. Images go through a small U-Net (sinusoidal time
embedding, residual blocks, down/up sampling sized from the input shape, optional self-attention at
the lowest resolution); tabular rows and 2-D points through an MLP denoiser. Categorical columns are
treated as numbers (a Gaussian diffusion has no notion of categories).

``ema`` holds an exponential moving average of the network's weights (updated by the diffusion
task's callback); :meth:`Diffusion.sample` uses it. Samples are returned in the model's input space:
the normalised pixels or columns the model was trained on.

The model contract's ``forward(x)`` is the network's noise estimate for ``x`` at ``t = 0`` (flattened,
unconditional) followed by ``head``, a linear layer the diffusion task does not train: a slot for
probing or fine-tuning, so every tool that works on "any model" still works here.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..data.kinds import input_kind
from . import LayerwiseModel, register_family
from .abilities import check_sample_options

__all__ = ["Diffusion", "DiffusionConfig", "MLPDenoiser", "UNet", "make_betas"]


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """Noise variances beta_1..beta_T (float64).

    ``linear``: Ho et al.'s 1e-4 .. 0.02 for T = 1000, rescaled by 1000 / T so other T keep the same
    total noise. ``cosine``: abar_t = cos^2(((t / T) + s) / (1 + s) * pi / 2) with s = 0.008, betas
    clipped at 0.999 so the last step stays invertible (Nichol & Dhariwal 2021, eq. 17).
    """
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64).clamp(max=0.999)
    s = 0.008
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class DiffusionConfig(ModelConfig):
    family: Literal["diffusion"] = "diffusion"
    schedule: Literal["linear", "cosine"] = Field("cosine", description="noise schedule (cosine: Nichol & Dhariwal 2021)")
    timesteps: int = Field(1000, ge=2, le=10000, description="diffusion steps T")
    channels: list[PositiveInt] = Field([32, 64], min_length=1, description="U-Net width at each resolution, highest first "
                                "(as many halvings as the input size allows)")
    attention: bool = Field(True, description="self-attention at the U-Net's lowest resolution")
    hidden: list[PositiveInt] = Field([128, 128, 128], min_length=1, description="MLP denoiser widths (tabular data)")
    time_dim: int = Field(64, ge=4, description="size of the sinusoidal time embedding (even)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside residual blocks")
    conditional: bool = Field(False, description="condition on class labels (classifier-free guidance)")
    label_dropout: float = Field(0.1, ge=0, le=1, description="probability a label is dropped in training "
                                 "(learns the unconditional model for guidance)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the weights' moving average used for sampling")
    sample_steps: int = Field(50, ge=1, description="DDIM steps when sample() is given none")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM noise: 0 deterministic, 1 like DDPM ancestral sampling")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps (Vaswani et al. 2017, as in Ho et al.): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the conditioning vector added between, and a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, cond_dim: int, dropout: float):
        super().__init__()
        self.block1 = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.cond = nn.Linear(cond_dim, cout)
        self.block2 = nn.Sequential(_norm(cout), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.cond(c)[:, :, None, None]  # (B, cout, H, W)
        return self.skip(x) + self.block2(h)


class SelfAttention(nn.Module):
    """Single-head attention over the H * W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _halvings(height: int, width: int, wanted: int) -> int:
    """How many times both sides can be halved exactly while staying at least 4 pixels (8 -> 4; 28 -> 14 -> 7)."""
    n = 0
    while n < wanted and height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= 4:
        height, width, n = height // 2, width // 2, n + 1
    return n


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al. 2015) as used by Ho et al.: x_t, step, label -> predicted noise."""

    def __init__(self, in_channels: int, size: tuple[int, int], channels: list[int], attention: bool,
                 cond_dim: int, dropout: float):
        super().__init__()
        levels = 1 + _halvings(size[0], size[1], len(channels) - 1)
        widths = channels[:levels]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(prev, w, cond_dim, dropout))
            prev = w
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid1 = ResBlock(prev, prev, cond_dim, dropout)
        self.attn = SelfAttention(prev) if attention else nn.Identity()
        self.mid2 = ResBlock(prev, prev, cond_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up.append(ResBlock(2 * widths[i], widths[i], cond_dim, dropout))  # concatenated skip
            if i > 0:
                self.upsample.append(nn.Conv2d(widths[i], widths[i - 1], 3, padding=1))
        self.out = nn.Sequential(_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, c)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H/2, W/2)
        h = self.mid2(self.attn(self.mid1(h, c)), c)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), c)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)


class MLPDenoiser(nn.Module):
    """Fully connected denoiser for rows of numbers: [x_t, conditioning] -> predicted noise."""

    def __init__(self, dim: int, hidden: list[int], cond_dim: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim + cond_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.SiLU()] + ([nn.Dropout(dropout)] if dropout else [])
            width = size
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, c], dim=1))


class Denoiser(nn.Module):
    """Time and label embedding in front of a U-Net or MLP: (x_t, t, labels) -> predicted noise."""

    def __init__(self, config: DiffusionConfig, spec, num_labels: int):
        super().__init__()
        self.time_dim = config.time_dim
        cond = 4 * config.time_dim
        self.time = nn.Sequential(nn.Linear(config.time_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        # one extra row: the "no label" token classifier-free guidance trains with dropped labels
        self.labels = nn.Embedding(num_labels + 1, cond) if num_labels else None
        self.null_label = num_labels
        if input_kind(spec).picture:  # one (C, H, W) picture: a U-Net
            c, h, w = spec.input_shape
            self.net: nn.Module = UNet(c, (h, w), config.channels, config.attention, cond, config.dropout)
        else:
            self.net = MLPDenoiser(int(math.prod(spec.input_shape)), config.hidden, cond, config.dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.time(timestep_embedding(t, self.time_dim))  # (B, 4 * time_dim)
        if self.labels is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
            c = c + self.labels(labels)
        return self.net(x, c)


@register_family("diffusion")
class Diffusion(LayerwiseModel):
    """Denoising diffusion (DDPM/DDIM) with a small U-Net or an MLP; class-conditional with guidance."""

    accepts = frozenset({"image", "tabular"})
    Config = DiffusionConfig
    implies_task = "diffusion"

    def __init__(self, config: DiffusionConfig, spec):
        super().__init__(config, spec)
        if config.time_dim % 2:
            raise ModelError(f"model.time_dim: must be even (sines and cosines in pairs); received {config.time_dim}")
        num_labels = 0
        if config.conditional:
            if spec.target != "class" or not spec.num_classes:
                raise ModelError(f"model.conditional: needs class labels, but the data has a {spec.target} target; "
                                 f"set model.conditional: false")
            num_labels = spec.num_classes
        self.num_labels = num_labels
        self.net = Denoiser(config, spec, num_labels)
        self.ema = copy.deepcopy(self.net)  # moving average of net's weights (the task's callback updates it)
        self.ema.requires_grad_(False)
        betas = make_betas(config.schedule, config.timesteps)
        # derived from the config: not saved, rebuilt identically on load
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)
        self.head = nn.Linear(int(math.prod(spec.input_shape)), spec.num_outputs)

    # -- the model contract ------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.net(x, t).flatten(1)  # (B, prod(input_shape))

    # -- training ------------------------------------------------------------------------------------
    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # broadcastable

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho et al., eq. 4)."""
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def diffusion_loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None, *,
                       generator: torch.Generator | None = None, use_ema: bool = False,
                       drop_labels: bool = True) -> torch.Tensor:
        """Per-sample noise-prediction MSE at a uniformly drawn step (Ho et al.'s L_simple): (B,)."""
        b = x0.shape[0]
        t = torch.randint(0, self.config.timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        if self.num_labels and labels is not None:
            if drop_labels and self.config.label_dropout > 0:
                drop = torch.rand(b, device=x0.device, generator=generator) < self.config.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.num_labels), labels)
        else:
            labels = None
        net = self.ema if use_ema else self.net
        pred = net(self.q_sample(x0, t, noise), t, labels)
        return (pred.float() - noise.float()).square().flatten(1).mean(1)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * net, for every parameter and buffer."""
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, p in zip(self.ema.buffers(), self.net.buffers()):
            e.copy_(p)

    # -- sampling -------------------------------------------------------------------------------------
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance: float,
                      use_ema: bool = True) -> torch.Tensor:
        """Guided noise estimate (Ho & Salimans 2021): eps_c + w (eps_c - eps_u); w = 0 is the conditional one."""
        net = self.ema if use_ema else self.net
        if labels is None or guidance == 0:
            return net(x, t, labels)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, self.num_labels)]))
        cond, uncond = both.chunk(2)
        return cond + guidance * (cond - uncond)

    # the Sampler ability: these options after labels and generator, in the model's input space
    sample_options: ClassVar[tuple[str, ...]] = ("steps", "method", "guidance", "eta", "use_ema", "clip")
    sample_units: ClassVar[str] = "input"

    @property
    def sample_classes(self) -> int:
        return self.num_labels

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | list[int] | int | None = None,
               generator: torch.Generator | None = None, steps: int | None = None,
               method: Literal["ddim", "ddpm"] = "ddim", guidance: float = 0.0, eta: float | None = None,
               use_ema: bool = True, clip: tuple | None = None, **options) -> torch.Tensor:
        """Draw ``n`` samples in the model's input space: (n, *input_shape).

        ``clip``: (low, high) bounds of the data in that space (numbers, or tensors broadcastable to
        the input shape). Each step's estimate of x0 is clamped to them and the noise estimate made
        consistent with it (Ho et al.'s ``clip_denoised``). Without it the first steps divide the
        network's error by sqrt(abar_t), about 2e-5 at t = T with the cosine schedule, and a
        28x28 model's samples blow up to thousands. :func:`layerwise.tools.generate.sample_run` passes the
        pixel range for image runs.

        ``method="ddpm"``: ancestral sampling (Ho et al., Alg. 2; posterior variance), by default over
        all T steps. ``"ddim"``: Song et al.'s update with ``eta`` (config default) over ``steps``
        evenly spaced steps (config ``sample_steps``). ``labels``: one class, or one per sample
        (conditional models). ``guidance``: classifier-free guidance weight.

        >>> x = model.sample(16, steps=50, labels=3, guidance=2.0)   # doctest: +SKIP
        """
        check_sample_options("diffusion", options, self.sample_options)
        T = self.config.timesteps
        if method not in ("ddim", "ddpm"):
            raise ModelError(f"sample: method must be 'ddim' or 'ddpm'; received {method!r}")
        steps = steps or (T if method == "ddpm" else self.config.sample_steps)
        if not 1 <= steps <= T:
            raise ModelError(f"sample: steps must be between 1 and timesteps ({T}); received {steps}")
        eta = self.config.eta if eta is None else eta
        device = self.alphas_cumprod.device
        labels = self._labels(n, labels, device)
        if labels is None and guidance:
            raise ModelError("sample: guidance needs labels (a class to guide towards); pass labels or guidance=0")
        net = self.ema if use_ema else self.net
        was_training = net.training
        net.eval()
        # evenly spaced steps t_S > ... > t_1 (Song et al. sec. 4.2); all T when steps == T
        taus = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
        x = torch.randn((n, *self.spec.input_shape), device=device, generator=generator)
        abar_all = self.alphas_cumprod.double()
        bounds = None if clip is None else tuple(torch.as_tensor(b, dtype=torch.float64, device=device) for b in clip)
        for i in reversed(range(len(taus))):
            t = taus[i]
            a_t = abar_all[t]
            a_prev = abar_all[taus[i - 1]] if i > 0 else torch.ones((), dtype=torch.float64, device=device)
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            eps = self.predict_noise(x, tt, labels, guidance, use_ema).double()
            xd = x.double()
            if clip is not None:
                x0 = ((xd - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(*bounds)
                eps = (xd - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            if method == "ddpm":
                beta = 1 - a_t / a_prev  # the step's beta when steps skip (equals beta_t with all T)
                mean = (xd - beta / (1 - a_t).sqrt() * eps) / (1 - beta).sqrt()
                var = beta * (1 - a_prev) / (1 - a_t)  # posterior variance beta-tilde
            else:
                x0 = (xd - (1 - a_t).sqrt() * eps) / a_t.sqrt()
                var = eta ** 2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
                mean = a_prev.sqrt() * x0 + (1 - a_prev - var).clamp(min=0).sqrt() * eps
            if i > 0:
                noise = torch.randn(x.shape, device=device, generator=generator).double()
                xd = mean + var.sqrt() * noise
            else:
                xd = mean
            x = xd.to(x.dtype)
        net.train(was_training)
        return x

    def _labels(self, n: int, labels, device) -> torch.Tensor | None:
        if labels is None:
            return None
        if not self.num_labels:
            raise ModelError("sample: labels given to an unconditional model; train with model.conditional: true")
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        if labels.dim() == 0:
            labels = labels.expand(n).clone()
        if labels.shape != (n,):
            raise ModelError(f"sample: labels must be one class or {n} classes; received shape {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_labels:
            raise ModelError(f"sample: labels must lie in 0..{self.num_labels - 1}; received {labels.tolist()}")
        return labels
