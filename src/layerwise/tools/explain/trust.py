"""How far to trust an explanation: faithfulness, infidelity, sensitivity and a sanity check.

- Deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models"): remove the features an explanation ranks highest for the target
  class first (deletion: replace them by the baseline; insertion: start from the baseline and put
  them back) in equal chunks, and record the target's softmax probability. A faithful explanation
  makes the probability fall fast (low deletion AUC) and rise fast (high insertion AUC); the same
  curves for random rankings are the bar it must clear.
- Infidelity and max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
  Explanations"), through Captum's ``captum.metrics``. Infidelity perturbs each element a small
  Gaussian fraction of the way to the baseline (x - (x - baseline) * n, n ~ N(0, ``NOISE``^2)) and
  expresses the perturbation in Captum's ``multiply_by_inputs`` units (n itself), the form that fits
  attributions which multiply by the input (integrated gradients, GradientSHAP, KernelSHAP, LIME,
  occlusion: exact for a linear model); a plain gradient (saliency) is local and scores worse by
  construction, so compare it with care. Captum's ``normalize=True`` makes it independent of the
  attributions' scale. Sensitivity samples the l-inf ball of radius ``RADIUS`` times the inputs'
  standard deviation. Both: lower is better.
- The model-randomisation check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): explain a
  copy of the model whose weights are re-initialised; the Spearman rank correlation between the
  |attributions| for the trained and the random model must be low (the explanation depends on what
  the model learned). Above ``RANDOMISATION_PASS`` the method fails the check. It is computed over
  the features present in the input (different from the baseline): where x equals the baseline,
  methods that multiply by (x - baseline) give 0 whatever the weights, and on sparse inputs (MNIST's
  black background) that shared tie alone would push the correlation to ~1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...core.errors import ConfigError, require
from .methods import as_baseline

__all__ = ["NOISE", "PERTURB_SAMPLES", "RADIUS", "RANDOMISATION_PASS", "RANDOM_SEEDS", "assess", "deletion_insertion",
           "plot_curves", "random_curves", "randomise", "rank_correlation"]

NOISE = 0.1  # infidelity: std of the Gaussian fraction of the way to the baseline
RADIUS = 0.1  # sensitivity: l-inf radius of the perturbations, same unit
PERTURB_SAMPLES = 8  # perturbations per sample for infidelity and sensitivity
RANDOM_SEEDS = 3  # random rankings averaged for the random baseline curves
RANDOMISATION_PASS = 0.5  # Spearman below this: the explanation changed with the weights (pass)
_REINIT_SEED = 20181018  # added to ``seed`` for the re-initialisation (Adebayo et al., arXiv 2018-10)
_MAX_ROWS = 2048  # inputs per forward call when evaluating the curves
_MAX_ELEMENTS = 1 << 24  # and input elements (64 MB of float32), for large images

Forward = Callable[[torch.Tensor], torch.Tensor]
Explain = Callable[[torch.Tensor, Any], torch.Tensor]


def _targets(forward: Forward, x: torch.Tensor, target: Any) -> torch.Tensor:
    """The target class of each sample, (B,) long; None means the predicted class."""
    if target is None:
        with torch.no_grad():
            return forward(x).argmax(-1).reshape(-1)
    t = torch.as_tensor(target, dtype=torch.long, device=x.device).reshape(-1)
    if len(t) == 1 and len(x) > 1:
        t = t.expand(len(x))
    if len(t) != len(x):
        raise ConfigError(f"trust: target has {len(t)} entries for {len(x)} samples; give one per sample or one")
    return t


def _feature_ids(groups: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each element's feature id, (B, n) with n elements per sample, and the number of features."""
    n = x[0].numel()
    if groups is None:
        return torch.arange(n, device=x.device).expand(len(x), n), n
    g = torch.as_tensor(groups, dtype=torch.long, device=x.device)
    if g.dim() == x.dim() - 1:
        g = g.unsqueeze(0)
    if g.shape[1:] != x.shape[1:]:
        raise ConfigError(f"trust: groups shape {tuple(g.shape)} does not match the input {tuple(x.shape)}")
    # ids made contiguous so no empty group takes a step of the curve
    _, ids = torch.unique(g.expand_as(x).reshape(len(x), n), return_inverse=True)
    return ids, int(ids.max()) + 1


def _random_orders(rows: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """One random permutation of range(count) per row, (rows, count)."""
    return torch.rand(rows, count, generator=generator).argsort(dim=1)


def _feature_ranks(scores: torch.Tensor, ids: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """The position of each feature (0 = removed first) when sorted by summed score, (B, count).

    Ties (e.g. the exact zeros of a ReLU network's gradient) are broken at random rather than by
    position, so they do not favour one corner of the input.
    """
    summed = torch.zeros(len(ids), count, dtype=torch.float64, device=ids.device)
    summed.scatter_add_(1, ids, scores.reshape(len(ids), -1).to(summed))
    perm = _random_orders(len(ids), count, generator).to(ids.device)
    order = perm.gather(1, summed.gather(1, perm).argsort(dim=1, descending=True, stable=True))
    return order.argsort(dim=1)


def _probabilities(forward: Forward, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = forward(batch).float()
    if out.dim() == 1 or out.shape[-1] == 1:  # a single output: the output itself
        return out.reshape(-1)
    return out.softmax(-1).gather(1, target.view(-1, 1)).squeeze(1)


def _curves(forward: Forward, x: torch.Tensor, element_rank: torch.Tensor, count: int, target: torch.Tensor,
            baseline: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves, each (B, steps + 1), and the fractions removed (steps + 1,)."""
    B = len(x)
    removed = torch.tensor([round(k * count / steps) for k in range(steps + 1)], device=x.device)
    flat, base = x.reshape(B, -1), baseline.reshape(B, -1)
    deletion, insertion = [], []
    # whole steps per forward call, every sample at once
    per_call = max(1, min(_MAX_ROWS // B, _MAX_ELEMENTS // flat.numel()))
    with torch.no_grad():
        for start in range(0, steps + 1, per_call):
            m = removed[start:start + per_call]
            mask = element_rank.unsqueeze(0) < m.view(-1, 1, 1)  # (k, B, n): already removed
            deleted = torch.where(mask, base, flat).reshape(-1, *x.shape[1:])
            inserted = torch.where(mask, flat, base).reshape(-1, *x.shape[1:])
            t = target.repeat(len(m))
            deletion.append(_probabilities(forward, deleted, t).view(len(m), B))
            insertion.append(_probabilities(forward, inserted, t).view(len(m), B))
    fractions = removed.double() / count
    return torch.cat(deletion).T.double(), torch.cat(insertion).T.double(), fractions


def deletion_insertion(forward: Forward, x: torch.Tensor, scores: torch.Tensor | None, target: Any,
                       baseline: torch.Tensor | float = 0.0, steps: int = 20, groups: torch.Tensor | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """Deletion and insertion curves of the features ranked by ``scores`` (None: random rankings).

    Returns ``deletion_auc``, ``insertion_auc`` (means over samples, trapezoid rule over the fraction
    removed, 0..1), ``fractions``, and the mean curves ``deletion`` and ``insertion`` as lists.

    >>> curves = deletion_insertion(model, x, x * model.weight[t], t, baseline=0.0)  # doctest: +SKIP
    """
    if steps < 1:
        raise ConfigError(f"trust: steps must be at least 1, got {steps}")
    x = x.detach()
    target = _targets(forward, x, target)
    ids, count = _feature_ids(groups, x)
    steps = min(steps, count)  # no more chunks than features
    generator = torch.Generator().manual_seed(seed)
    if scores is None:
        rank = _random_orders(len(x), count, generator).to(x.device)
    else:
        rank = _feature_ranks(torch.as_tensor(scores).detach().to(x.device), ids, count, generator)
    element_rank = rank.gather(1, ids)  # (B, n): when each element goes
    deletion, insertion, fractions = _curves(forward, x, element_rank, count, target, as_baseline(baseline, x), steps)
    return {"deletion_auc": float(torch.trapezoid(deletion, fractions).mean()),
            "insertion_auc": float(torch.trapezoid(insertion, fractions).mean()),
            "fractions": fractions.tolist(), "deletion": deletion.mean(0).tolist(),
            "insertion": insertion.mean(0).tolist()}


def random_curves(forward: Forward, x: torch.Tensor, target: Any, baseline: torch.Tensor | float = 0.0,
                  steps: int = 20, groups: torch.Tensor | None = None, seed: int = 0) -> dict[str, Any]:
    """The :func:`deletion_insertion` curves of random rankings, averaged over ``RANDOM_SEEDS`` seeds."""
    runs = [deletion_insertion(forward, x, None, target, baseline, steps, groups, seed + 1000 + i)
            for i in range(RANDOM_SEEDS)]
    mean = {key: [sum(values) / len(runs) for values in zip(*(r[key] for r in runs))]
            for key in ("deletion", "insertion")}
    return {"deletion_auc": sum(r["deletion_auc"] for r in runs) / len(runs),
            "insertion_auc": sum(r["insertion_auc"] for r in runs) / len(runs),
            "fractions": runs[0]["fractions"], **mean}


def rank_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties get average ranks),
    over the entries where ``mask`` is true (all when None).

    A row with no ranking (constant, or fewer than two entries) has correlation 0.
    """
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    keep = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.reshape(len(a), -1).to(a.device, torch.bool)

    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = torch.where(keep, v, torch.inf)  # left-out entries sort last and count for no one
        s = v.sort(dim=1).values
        lower = torch.searchsorted(s, v, side="left")
        upper = torch.searchsorted(s, v, side="right")
        return (lower + upper - 1).double() / 2  # the mean of the 0-based positions of the ties

    count = keep.sum(1, keepdim=True).clamp_min(1)
    ra, rb = ranks(a), ranks(b)
    ra = torch.where(keep, ra - (ra * keep).sum(1, keepdim=True) / count, 0.0)
    rb = torch.where(keep, rb - (rb * keep).sum(1, keepdim=True) / count, 0.0)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised (the Adebayo et al. cascade, all
    layers at once): ``reset_parameters`` where a module has it, else a normal init."""
    clone = copy.deepcopy(model)
    done: set[int] = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        # offset so the re-initialisation never repeats the model's own initialisation (training
        # usually seeds with a small integer; the same seed would rebuild the starting weights)
        torch.manual_seed(_REINIT_SEED + seed)
        for module in clone.modules():
            own = list(module.parameters(recurse=False))
            if own and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                done.update(id(p) for p in own)
        for p in clone.parameters():
            if id(p) not in done:  # e.g. a learned position embedding or class token
                std = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.02
                p.normal_(0.0, std)
    return clone.eval()


def _by_feature(attr: torch.Tensor, present: torch.Tensor, groups: torch.Tensor | None,
                x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|attribution| per feature, (B, features), summed over each group when groups are given, and
    whether each feature is present (differs from the baseline in at least one element)."""
    magnitude = attr.detach().abs().reshape(len(attr), -1).double()
    present = present.reshape(len(attr), -1)
    if groups is None:
        return magnitude, present
    ids, count = _feature_ids(groups, x)
    ids = ids.to(magnitude.device)
    summed = torch.zeros(len(attr), count, dtype=torch.float64, device=magnitude.device).scatter_add_(1, ids, magnitude)
    hits = torch.zeros(len(attr), count, dtype=torch.float64, device=magnitude.device)
    return summed, hits.scatter_add_(1, ids, present.double()) > 0


def _explanation_func(explain: Explain) -> Callable[..., torch.Tensor]:
    """Captum's metrics pass the inputs as a tensor or a tuple (and expect the same form back) and the
    target as a keyword; ``explain`` takes one tensor and a positional target."""
    def explanation(inputs, target=None):
        if isinstance(inputs, tuple):
            return (explain(inputs[0], target).to(inputs[0].device, inputs[0].dtype),)
        return explain(inputs, target).to(inputs.device, inputs.dtype)

    return explanation


def assess(forward: Forward, explain: Explain, x: torch.Tensor, target: Any, *, baseline: torch.Tensor | float,
           explain_for: Callable[[torch.nn.Module], Explain] | None = None, model: torch.nn.Module | None = None,
           groups: torch.Tensor | None = None, steps: int = 20, seed: int = 0) -> dict[str, float]:
    """forward(x) -> logits; explain(x, target) -> attributions shaped like x; baseline: tensor
    shaped like x or a float (the 'removed' value); groups: optional LongTensor shaped like x mapping
    each element to a feature id (e.g. image patches, one-hot columns, token positions) so features
    are removed as groups ranked by summed attribution; explain_for(model) -> explain function for
    another model (the randomisation check uses a re-initialised deep copy of `model`).
    Returns deletion_auc, insertion_auc, random_deletion_auc, random_insertion_auc, infidelity,
    sensitivity, randomisation_spearman (missing keys when not computable, e.g. no model given).

    ``target`` None explains the predicted class. Infidelity and sensitivity need float inputs and
    are left out for token ids. Captum computes sensitivity under ``torch.no_grad``: an ``explain``
    taking gradients must enable them itself (Captum's attribution methods do).

    >>> scores = assess(model, lambda x, t: attribute("saliency", model, x, t), x, y, baseline=0.0,
    ...                 model=model, explain_for=lambda m: lambda x, t: attribute("saliency", m, x, t))
    ...                 # doctest: +SKIP
    """
    x = x.detach()
    target = _targets(forward, x, target)
    attr = explain(x, target).detach().to(x.device)
    if attr.shape != x.shape:
        raise ConfigError(f"trust: the explanation has shape {tuple(attr.shape)}, the input {tuple(x.shape)}; "
                          f"explain(x, target) must return attributions shaped like x")
    curves = deletion_insertion(forward, x, attr, target, baseline, steps, groups, seed)
    chance = random_curves(forward, x, target, baseline, steps, groups, seed)
    result = {"deletion_auc": curves["deletion_auc"], "insertion_auc": curves["insertion_auc"],
              "random_deletion_auc": chance["deletion_auc"], "random_insertion_auc": chance["insertion_auc"]}
    if x.is_floating_point():
        metrics = require("captum.metrics", "explain")
        base = as_baseline(baseline, x).clone()
        spread = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
        generator = torch.Generator().manual_seed(seed)

        def noise(inputs, baselines):  # Captum's contract: return (perturbations, perturbed inputs)
            # a random fraction of the way to the baseline per element; the perturbation in the units
            # of attributions that multiply by (x - baseline) is that fraction
            fraction = torch.randn(inputs.shape, generator=generator).to(inputs) * NOISE
            return fraction, inputs - (inputs - baselines) * fraction

        def ball(inputs, radius):
            return inputs + (torch.rand(inputs.shape, generator=generator).to(inputs) * 2 - 1) * radius

        with torch.no_grad():
            rows = max(len(x), min(_MAX_ROWS, len(x) * PERTURB_SAMPLES))  # Captum's bounds for a sub-batch
            infidelity = metrics.infidelity(forward, noise, x, attr.to(x.dtype), baselines=base, target=target,
                                            n_perturb_samples=PERTURB_SAMPLES, normalize=True,
                                            max_examples_per_batch=rows)
        # one perturbed copy of the batch per explain call: the explain call itself may expand each
        # input many times (integration steps, perturbation samples)
        sensitivity = metrics.sensitivity_max(_explanation_func(explain), x, perturb_func=ball,
                                              perturb_radius=RADIUS * spread, n_perturb_samples=PERTURB_SAMPLES,
                                              max_examples_per_batch=len(x), target=target)
        result["infidelity"] = float(infidelity.double().mean())
        result["sensitivity"] = float(sensitivity.double().mean())
    if model is not None and explain_for is not None:
        random_attr = explain_for(randomise(model, seed))(x, target).detach().to(x.device)
        # over the features present in the input: where x equals the baseline, every method that
        # multiplies by (x - baseline) gives 0 for any weights, and that shared tie alone would make
        # sparse inputs (MNIST's black background) look unchanged
        present = x != as_baseline(baseline, x)
        trained, keep = _by_feature(attr, present, groups, x)
        randomised, _ = _by_feature(random_attr, present, groups, x)
        result["randomisation_spearman"] = float(rank_correlation(trained, randomised, keep).mean())
    return result


def plot_curves(curves_by_method: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Deletion (left) and insertion (right) curves, one line per method, from
    :func:`deletion_insertion` results; a method named ``random`` is drawn dashed grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, kind, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        for method, curves in curves_by_method.items():
            style = {"linestyle": "--", "color": "grey"} if method == "random" else {}
            ax.plot(curves["fractions"], curves[kind], label=f"{method} (AUC {curves[kind + '_auc']:.3f})", **style)
        ax.set_xlabel("fraction of features " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_title(f"{kind} ({better} AUC is better)")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("probability of the target class")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
