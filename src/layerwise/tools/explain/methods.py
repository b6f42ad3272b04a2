"""Attribution methods, all through Captum (Kokhlikyan et al. 2020, "Captum: A unified and generic
model interpretability library for PyTorch"); nothing here re-implements what Captum has.

- saliency: the input gradient (Simonyan, Vedaldi & Zisserman 2014), signed (``abs=False``);
- integrated_gradients: Sundararajan, Taly & Yan 2017, the path integral of gradients from a baseline;
- gradient_shap: Lundberg & Lee 2017's expected gradients, baselines = baseline plus Gaussian noise;
- kernel_shap: Lundberg & Lee 2017, Shapley values by a weighted linear regression on coalitions;
- lime: Ribeiro, Singh & Guestrin 2016, a local linear surrogate on perturbed samples;
- occlusion: Zeiler & Fergus 2014, the output change when a sliding window is replaced by the baseline.

``attention`` and ``attention_rollout`` (Abnar & Zuidema 2020) only fit transformer-family runs and
live in :mod:`layerwise.tools.explain.attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...core.errors import ConfigError, require

__all__ = [
    "ATTENTION_METHODS",
    "GRADIENT_METHODS",
    "METHODS",
    "PERTURBATION_METHODS",
    "Explained",
    "attribute",
    "check_methods",
    "samples_for",
]

METHODS = ("saliency", "integrated_gradients", "gradient_shap", "kernel_shap", "lime", "occlusion")
ATTENTION_METHODS = ("attention", "attention_rollout")  # transformer families only
GRADIENT_METHODS = ("saliency", "integrated_gradients", "gradient_shap")  # need a differentiable input
PERTURBATION_METHODS = ("kernel_shap", "lime", "occlusion")

# default cost per method: integration steps or perturbed samples per explained sample (occlusion and
# saliency ignore it); enough for stable pictures in seconds on a CPU
DEFAULT_SAMPLES = {"saliency": 1, "integrated_gradients": 50, "gradient_shap": 50, "kernel_shap": 200,
                   "lime": 200, "occlusion": 1}


def samples_for(method: str) -> int:
    """The default ``samples`` of a method (integration steps or perturbed samples)."""
    return DEFAULT_SAMPLES.get(method, 50)


@dataclass
class Explained:
    """What a per-kind module returns for one batch of explained samples."""

    attributions: dict[str, np.ndarray]  # method -> array shaped like the explained input (B, ...)
    files: list[str] = field(default_factory=list)  # pictures / HTML written into the out folder
    summary: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (importance, attention...)
    html: str = ""  # fragment for the report section


def check_methods(methods, allowed: tuple[str, ...] = METHODS) -> list[str]:
    """Validate method names: unknown -> one line listing every method; known but not ``allowed``
    for this run -> one line saying which fit."""
    out = []
    for method in methods:
        if method not in METHODS + ATTENTION_METHODS:
            raise ConfigError(f"explain: unknown method '{method}'; choose one of "
                              f"{', '.join(METHODS + ATTENTION_METHODS)}")
        if method not in allowed:
            why = ("it needs a transformer-family run with attention layers" if method in ATTENTION_METHODS
                   else "it does not fit this run's input kind")
            raise ConfigError(f"explain: method '{method}' does not fit this run: {why}; "
                              f"methods that fit: {', '.join(allowed)}")
        if method not in out:
            out.append(method)
    return out


def as_baseline(baseline: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor shaped like ``x`` (a scalar or one sample broadcasts)."""
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if base.shape == x.shape:
        return base
    try:
        return base.expand_as(x).clone()
    except RuntimeError:
        raise ConfigError(f"explain: baseline shape {tuple(base.shape)} does not fit the input {tuple(x.shape)}; "
                          f"give a float or a tensor shaped like the input") from None


def attribute(method: str, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              target: torch.Tensor, *, baseline: torch.Tensor | float = 0.0,
              feature_mask: torch.Tensor | None = None, samples: int = 50, seed: int = 0,
              window: tuple[int, ...] | None = None) -> torch.Tensor:
    """Attributions of ``forward(x)[i, target[i]]`` to ``x``, same shape as ``x`` (float, detached, cpu).

    ``samples`` is the number of integration steps (integrated gradients) or of perturbed samples
    (GradientSHAP, KernelSHAP, LIME); ``feature_mask`` (shaped like ``x`` or like one sample, integer
    group ids) makes KernelSHAP and LIME switch groups of features together; ``window`` is the
    occlusion window of one sample (defaults to one feature).

    >>> attr = attribute("saliency", model, x, model(x).argmax(1))  # doctest: +SKIP
    """
    if method in ATTENTION_METHODS:
        raise ConfigError(f"explain: method '{method}' reads a transformer's attention weights and has no "
                          f"gradient form; use one of {', '.join(METHODS)} here")
    if method not in METHODS:
        raise ConfigError(f"explain: unknown method '{method}'; choose one of {', '.join(METHODS + ATTENTION_METHODS)}")
    if x.is_floating_point() is False:
        raise ConfigError(f"explain: method '{method}' needs float inputs, got {x.dtype} (token ids are "
                          f"explained through their embeddings)")
    if samples < 1:
        raise ConfigError(f"explain: samples must be at least 1, got {samples}")
    attr = require("captum.attr", "explain")
    x = x.detach()
    target = torch.as_tensor(target, dtype=torch.long, device=x.device).reshape(-1)
    if len(target) == 1 and len(x) > 1:
        target = target.expand(len(x))
    base = as_baseline(baseline, x)
    # the sampling methods draw from torch's and NumPy's global generators (GradientSHAP's baseline
    # picks and path points): seed both, and leave the caller's states as they were
    numpy_state = np.random.get_state()
    try:
        np.random.seed(seed)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            if method == "saliency":
                out = attr.Saliency(forward).attribute(x.clone().requires_grad_(True), target=target, abs=False)
            elif method == "integrated_gradients":
                out = attr.IntegratedGradients(forward).attribute(x, baselines=base, target=target, n_steps=samples)
            elif method == "gradient_shap":
                # a distribution of baselines around the given one; the noise scale is 10% of the input's
                # spread, so the expectation stays close to the reference input
                spread = float(x.std()) if x.numel() > 1 else 1.0
                refs = torch.cat([base[:1], base[:1] + 0.1 * spread * torch.randn_like(base[:1])])
                out = attr.GradientShap(forward).attribute(x, baselines=refs, target=target, n_samples=samples,
                                                           stdevs=0.0)
            elif method in ("kernel_shap", "lime"):
                if method == "kernel_shap":
                    explainer = attr.KernelShap(forward)
                else:
                    # ridge as the surrogate, as in Ribeiro et al.'s lime package: Captum's default lasso
                    # (alpha 0.01) zeroes every coefficient when the outputs barely move (e.g. a random model)
                    from captum._utils.models.linear_model import SkLearnRidge

                    explainer = attr.Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
                out = _per_sample(explainer, x, target, base, _full_mask(feature_mask, x), samples)
            else:
                out = _occlusion(attr, forward, x, target, base, window)
    finally:
        np.random.set_state(numpy_state)
    return out.detach().float().cpu()


def _full_mask(feature_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A feature mask shaped like one sample (1, ...), or None for one group per feature."""
    if feature_mask is None:
        return None
    mask = torch.as_tensor(feature_mask, dtype=torch.long, device=x.device)
    if mask.dim() == x.dim() - 1:
        mask = mask.unsqueeze(0)
    if mask.shape[1:] != x.shape[1:]:
        raise ConfigError(f"explain: feature_mask shape {tuple(mask.shape[1:])} does not match the input "
                          f"{tuple(x.shape[1:])}")
    return mask


def _per_sample(explainer, x, target, base, mask, samples) -> torch.Tensor:
    """KernelSHAP and LIME fit one surrogate per sample, so they are asked one sample at a time."""
    rows = []
    for i in range(len(x)):
        m = None if mask is None else (mask[i:i + 1] if len(mask) == len(x) else mask[:1])
        rows.append(explainer.attribute(x[i:i + 1], baselines=base[i:i + 1], target=target[i:i + 1],
                                        feature_mask=m, n_samples=samples,
                                        perturbations_per_eval=min(samples, 64)))  # bounded memory
    return torch.cat(rows)


def _occlusion(attr, forward, x, target, base, window) -> torch.Tensor:
    shape = tuple(x.shape[1:])
    window = tuple(window) if window is not None else (1,) * len(shape)
    if len(window) != len(shape):
        raise ConfigError(f"explain: occlusion window {window} needs one size per input dimension {shape}")
    if any(w < 1 or w > s for w, s in zip(window, shape)):
        raise ConfigError(f"explain: occlusion window {window} does not fit the input {shape}; "
                          f"use sizes between 1 and the input size")
    return attr.Occlusion(forward).attribute(x, sliding_window_shapes=window, strides=window, baselines=base,
                                             target=target, perturbations_per_eval=16)
