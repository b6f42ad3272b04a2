"""Variational autoencoder training: maximise the evidence lower bound (Kingma & Welling 2014,
"Auto-Encoding Variational Bayes").

Per sample, in nats: ``recon`` = -log p(x|z) for one reparameterised z ~ q(z|x), ``kl`` =
KL(q(z|x) || N(0, I)) in closed form, ``elbo`` = -(recon + kl) <= log p(x). The loss is
``recon + beta * kl`` (the negative ELBO when beta = 1). A Bernoulli likelihood scores pixels in
[0, 1], recovered from the normalised batch with the run's ImagePreprocessor; a Gaussian one scores
the standardised features themselves. The history has ``elbo``, ``recon`` and ``kl`` per epoch; the
test evaluation adds ``nll_bound`` (= -elbo). :func:`importance_weighted_nll` gives the tighter
K-sample bound of Burda et al. 2016. The report shows reconstructions and samples from the prior.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field

from ..core.config import TaskConfig
from ..core.errors import ModelError, RunError
from ..core.sections import register_section
from . import StepOutput, Task, register_task
from .evaluation import EvalResult
from .reconstruction import _test_images, reconstruction_grid

__all__ = ["EVAL_SEED", "VAEConfig", "VAEEvaluator", "VAETask", "importance_weighted_nll", "model_view"]

CHUNK = 8192  # decoder rows per call in importance_weighted_nll
EVAL_SEED = 0  # evaluation draws its z with a fixed generator: the same run scores the same twice


def likelihood_target(model, preprocessing, x: torch.Tensor) -> torch.Tensor:
    """What p(x|z) scores: pixels in [0, 1] (bernoulli, from the normalised batch), else ``x``."""
    if model.likelihood == "bernoulli":
        return preprocessing.inputs.denormalize_pixels(x).clamp(0.0, 1.0)
    return x


def model_view(model, preprocessing, x: torch.Tensor, generator: torch.Generator | None = None):
    """(encoder input, likelihood target) of a normalised batch. ``model.binarize``: both become one
    stochastic binarisation of the pixels (each pixel 1 with probability its intensity), so the
    encoder reads the very image the likelihood scores; otherwise (``x``, :func:`likelihood_target`)."""
    target = likelihood_target(model, preprocessing, x)
    if not getattr(model.config, "binarize", False):
        return x, target
    draw = torch.rand(target.shape, generator=generator, device=generator.device if generator else target.device)
    binary = (draw.to(target.device) < target).to(target.dtype)
    return preprocessing.inputs.normalize_pixels(binary), binary


class VAEEvaluator:
    """Streams sums of the per-sample ELBO terms (nats) over batches of (B, 2) [recon, kl] outputs."""

    def __init__(self):
        self.recon = 0.0
        self.kl = 0.0
        self.count = 0

    def update(self, outputs: torch.Tensor, y: torch.Tensor | None = None, x: torch.Tensor | None = None) -> None:
        terms = outputs.detach().double()
        self.recon += float(terms[:, 0].sum())
        self.kl += float(terms[:, 1].sum())
        self.count += terms.shape[0]

    def compute(self, class_names=None) -> EvalResult:
        n = max(self.count, 1)
        recon, kl = self.recon / n, self.kl / n
        return EvalResult({"elbo": -(recon + kl), "recon": recon, "kl": kl, "nll_bound": recon + kl},
                          {"samples": self.count})


class VAEConfig(TaskConfig):
    """``task: {name: vae, ...}``."""

    importance_samples: int = Field(
        100, ge=0, description="importance samples K of the NLL bound (Burda et al. 2016) in the final evaluation "
                               "(0: off)")


@register_task("vae")
class VAETask(Task):
    """Maximise the ELBO; report it with its reconstruction and KL terms, in nats per sample."""

    target = None  # any data: the labels are never used
    predicts_target = False  # the output is an ELBO per sample
    anomaly_score = "score"  # -ELBO, an upper bound on -log p(x) (An & Cho 2015)
    main_metric = "elbo"
    greater_is_better: ClassVar[dict[str, bool]] = {"elbo": True}
    Config = VAEConfig

    def check_model(self, model) -> None:
        if not all(hasattr(model, attr) for attr in ("encode", "decode", "terms")):
            family = getattr(getattr(model, "config", None), "family", type(model).__name__)
            raise ModelError(f"model.family: task 'vae' needs a variational model (encode, decode, terms); "
                             f"'{family}' is not one; use family: vae")

    def configure_optimizers(self, model):
        self.check_model(model)
        return super().configure_optimizers(model)

    def terms(self, model, x: torch.Tensor, generator: torch.Generator | None = None):
        x, target = model_view(model, self.preprocessing, x, generator)
        return model.terms(x, target, generator)

    def training_step(self, model, batch, ctx):
        x, _ = batch
        t = self.terms(model, x)
        loss = (t.recon + model.config.beta * t.kl).mean()
        sums = {"recon": t.recon.detach().sum(), "kl": t.kl.detach().sum()}
        return StepOutput(loss, x.shape[0], None, sums)

    def summarize(self, sums, count):
        if "recon" not in sums:
            return {}
        recon, kl = sums["recon"] / max(count, 1e-12), sums["kl"] / max(count, 1e-12)
        return {"elbo": -(recon + kl), "recon": recon, "kl": kl}

    def evaluation_step(self, model, batch):
        x, _ = batch
        gen = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        t = self.terms(model, x, gen)
        loss = (t.recon + model.config.beta * t.kl).mean()
        return StepOutput(loss, x.shape[0], torch.stack([t.recon, t.kl], 1))  # outputs: (B, 2)

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``outputs``: (B, 2) [recon, kl] from an evaluation step; ``score`` = -ELBO (an anomaly score)."""
        if outputs.dim() != 2 or outputs.shape[1] != 2:  # the model's forward (the contract's read-out)
            raise RunError("predict: a vae run predicts from inputs, not from model outputs; "
                           "use run.task.predict_batch(run.model, x) with a normalised batch x")
        recon, kl = outputs[:, 0].float(), outputs[:, 1].float()
        return {"elbo": -(recon + kl), "recon": recon, "kl": kl, "score": recon + kl}

    def predict_batch(self, model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions straight from normalised inputs (B, *input_shape)."""
        with torch.no_grad():
            return self.predict(self.evaluation_step(model, (x, None)).outputs)

    def evaluator(self, eval_cfg) -> Any:
        return VAEEvaluator()

    def final_metrics(self, model, loader, eval_cfg) -> dict[str, float]:
        """``iw_nll``: the importance-weighted bound with ``task.importance_samples`` samples."""
        k = self.config.importance_samples
        if not k:
            return {}
        total, count = 0.0, 0
        for x, _ in loader:
            gen = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
            total += float(importance_weighted_nll(model, self.preprocessing, x, k, gen).double().sum())
            count += x.shape[0]
        return {"iw_nll": total / max(count, 1), "iw_samples": k}


@torch.no_grad()
def importance_weighted_nll(model, preprocessing, x: torch.Tensor, k: int = 100,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample upper bound on -log p(x) from ``k`` importance samples (Burda et al. 2016), nats: (B,).

    -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); k = 1 gives -ELBO, larger k a tighter bound.
    With ``model.binarize`` the batch is binarised first (with ``generator``: the evaluation's fixed draw).
    The k draws go through the decoder in chunks of ``CHUNK`` rows: memory stays bounded for k in the
    thousands."""
    x, target = model_view(model, preprocessing, x, generator)
    mu, logvar = model.encode(x)
    batch = x.shape[0]
    per_chunk = max(1, CHUNK // batch)  # draws per decoder call
    log_w = []
    for start in range(0, k, per_chunk):
        m = min(per_chunk, k - start)
        mu_m, logvar_m = mu.repeat(m, 1), logvar.repeat(m, 1)  # (m * B, latent), draw-major
        z = model.reparameterize(mu_m, logvar_m, generator)
        decoded = model.decode(z).float()
        tgt = target.repeat(m, *([1] * (target.dim() - 1)))
        if model.likelihood == "bernoulli":
            log_px = -torch.nn.functional.binary_cross_entropy_with_logits(decoded, tgt, reduction="none")
        else:
            s = model.log_scale
            log_px = -(0.5 * math.log(2 * math.pi) + s + 0.5 * ((tgt - decoded) * torch.exp(-s)) ** 2)
        log_pz = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(1)
        log_qz = -0.5 * (((z - mu_m) ** 2) / logvar_m.exp() + logvar_m + math.log(2 * math.pi)).sum(1)
        log_w.append((log_px.flatten(1).sum(1) + log_pz - log_qz).view(m, batch))
    return -(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))


def _samples_grid(images: torch.Tensor, cols: int = 10) -> str:
    from ..core.sections import image_grid_html

    return image_grid_html(images, cols, "samples from the prior")


@register_section("vae_samples")
def _vae_section(run):
    if run.config.task != "vae":
        return None
    x = _test_images(run)
    if x is None:
        return None
    model = run.model.cpu().eval()
    pixels = run.preprocessing.inputs.denormalize_pixels
    with torch.no_grad():
        mu, _ = model.encode(x)
        mean = model.mean(model.decode(mu))  # reconstruction from the posterior mean
        rebuilt = mean if model.likelihood == "bernoulli" else pixels(mean)
        samples = model.sample(40, generator=torch.Generator().manual_seed(EVAL_SEED))
        if model.likelihood != "bernoulli":
            samples = pixels(samples)
    parts = [reconstruction_grid(run, pixels(x), rebuilt, "test inputs and their reconstructions"),
             "<p>Means of p(x|z) for z drawn from the prior N(0, I) (fixed seed).</p>", _samples_grid(samples)]
    return "VAE reconstructions and samples", "\n".join(parts)
