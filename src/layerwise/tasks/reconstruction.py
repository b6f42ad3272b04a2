"""Reconstruction: train an autoencoder to give back its input (Hinton & Salakhutdinov 2006), or,
with ``denoising``, its clean input from a corrupted one (Vincent et al. 2008).

Loss: mean squared error per input value, in the normalised units the model reads. Metric ``mse``:
the same error in pixel intensities in [0, 1] for images (comparable across normalisations), in
standardised units for tabular features. Predictions: the per-sample error (an anomaly score).
The report shows test inputs next to their reconstructions.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..core.errors import ModelError, RunError
from ..core.sections import register_section
from ..data.kinds import input_kind
from . import StepOutput, Task, register_task
from .evaluation import EvalResult

__all__ = ["Reconstruction", "ReconstructionEvaluator", "reconstruction_grid"]


def _pixels(preprocessing, x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to pixels in [0, 1]; other inputs unchanged."""
    inputs = getattr(preprocessing, "inputs", None)
    if hasattr(inputs, "denormalize_pixels") and x.dim() == 4:
        return inputs.denormalize_pixels(x)
    return x


class ReconstructionEvaluator:
    """Streams per-sample errors: their sum, sum of squares and count (memory does not grow with the data)."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def update(self, outputs: torch.Tensor, y: torch.Tensor | None = None, x: torch.Tensor | None = None) -> None:
        errors = outputs.detach().float().reshape(-1)  # (B,) per-sample mse
        self.total += float(errors.sum())
        self.count += errors.numel()

    def compute(self, class_names=None) -> EvalResult:
        mse = self.total / max(self.count, 1)
        return EvalResult({"mse": mse, "rmse": mse ** 0.5}, {"samples": self.count})


@register_task("reconstruction")
class Reconstruction(Task):
    """Give back the (clean) input; the error per sample is the prediction."""

    target = None  # any data: the labels are never used
    predicts_target = False  # the output is a reconstruction error per sample
    anomaly_score = "error"  # badly rebuilt inputs are unusual (Sakurada & Yairi 2014)
    main_metric = "mse"
    greater_is_better: ClassVar[dict[str, bool]] = {}

    def check_model(self, model) -> None:
        if not all(hasattr(model, attr) for attr in ("encode", "decode")):
            family = getattr(getattr(model, "config", None), "family", type(model).__name__)
            raise ModelError(f"model.family: task 'reconstruction' needs a model with encode and decode; '{family}' "
                             f"has none; use family: autoencoder")

    def configure_optimizers(self, model):
        self.check_model(model)
        return super().configure_optimizers(model)

    def errors(self, model: torch.nn.Module, x: torch.Tensor, recon: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample mean squared error of the reconstruction of clean ``x``: (B,), pixel units for images."""
        if recon is None:
            recon = model.decode(model.encode(x))
        diff = _pixels(self.preprocessing, recon.float()) - _pixels(self.preprocessing, x.float())
        return diff.pow(2).flatten(1).mean(1)

    def training_step(self, model, batch, ctx):
        x, _ = batch
        noisy = model.corrupt(x) if hasattr(model, "corrupt") else x  # denoising: noise in training only
        recon = model.decode(model.encode(noisy))
        loss = (recon.float() - x.float()).pow(2).mean()  # the clean input is the target
        return StepOutput(loss, x.shape[0], None, {"mse": self.errors(model, x, recon.detach()).sum()})

    def evaluation_step(self, model, batch):
        x, _ = batch
        recon = model.decode(model.encode(x))
        loss = (recon.float() - x.float()).pow(2).mean()
        return StepOutput(loss, x.shape[0], self.errors(model, x, recon))  # outputs: (B,) errors

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``outputs``: the per-sample errors (B,) an evaluation step returns; the error is the anomaly score."""
        if outputs.dim() != 1:  # the model's forward (the contract's read-out), not errors
            raise RunError("predict: a reconstruction run predicts from inputs, not from model outputs; "
                           "use run.task.predict_batch(run.model, x) with a normalised batch x")
        return {"error": outputs.float()}

    def predict_batch(self, model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions straight from normalised inputs (B, *input_shape): ``error`` per sample."""
        with torch.no_grad():
            return self.predict(self.errors(model, x))

    def evaluator(self, eval_cfg) -> Any:
        return ReconstructionEvaluator()


def reconstruction_grid(run, originals: torch.Tensor, rebuilt: torch.Tensor, title: str) -> str:
    """Two rows of images, (n, C, H, W) pixels in [0, 1]: inputs above, reconstructions below."""
    from ..core.sections import figure_html, pyplot, show_image

    plt = pyplot()
    n = originals.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.0 * n, 2.2), squeeze=False)
    for row, images in enumerate((originals, rebuilt)):
        for ax, img in zip(axes[row], images):
            show_image(ax, img)
    axes[0][0].set_title("input", fontsize=8, loc="left")
    axes[1][0].set_title("reconstruction", fontsize=8, loc="left")
    return figure_html(fig, title)


def _test_images(run, n: int = 10) -> torch.Tensor | None:
    if not input_kind(run.spec).picture:
        return None
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None or not len(split):
        return None
    return run.preprocessing.inputs.batch(split.x[:n])  # normalised, as the model reads them


@register_section("reconstructions")
def _reconstructions_section(run):
    if run.config.task != "reconstruction":
        return None
    x = _test_images(run)
    if x is None:
        return None
    model = run.model.cpu().eval()
    with torch.no_grad():
        rebuilt = model.decode(model.encode(x))
    pixels = run.preprocessing.inputs.denormalize_pixels
    body = reconstruction_grid(run, pixels(x), pixels(rebuilt), "test inputs and their reconstructions")
    return "Reconstructions", body
