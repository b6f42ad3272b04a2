"""Adversarial attacks on a trained classification run: FGSM and PGD, untargeted and targeted.

FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" — one
step of size eps along the sign (linf) or the direction (l2) of the loss gradient.
PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" — a random
start inside the eps-ball, then ``steps`` gradient steps, each projected back onto the ball.

Both attack the model's input and respect its valid range: image runs are attacked in raw pixel
space [0, 1] (normalization happens inside the forward, as the preprocessor does it), so eps is in
pixel units (eps 0.3 = 30% of the intensity range). Tabular and float-sequence runs are attacked in
their standardized feature space, clamped per feature to the min/max seen in the training split
(embedding-encoded categorical columns are never perturbed). Token inputs cannot be attacked by
gradients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError, RunError

__all__ = ["METHODS", "NORMS", "AttackResult", "attack_run", "fgsm", "pgd"]

METHODS = ("fgsm", "pgd")
NORMS = ("linf", "l2")

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign for linf, normalized gradient for l2."""
    return grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project a perturbation onto the eps-ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)


def _loss_grad(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Gradient of the loss to ascend: the true-label loss, or minus the target-label loss."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model_fn(x).float(), y)
    (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def _check(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise ConfigError(f"attack: unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
    if eps < 0:
        raise ConfigError(f"attack: eps must be >= 0, got {eps}")


def fgsm(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
         targeted: bool = False, lo: Any = 0.0, hi: Any = 1.0) -> torch.Tensor:
    """One step of size ``eps``; ``y`` is the true label, or the target label when ``targeted``.

    ``lo``/``hi`` (scalars or tensors broadcasting against ``x``) bound the valid input range; x must
    lie inside it. Clamping to the box only shrinks each coordinate of the perturbation, so the
    result stays inside the eps-ball of either norm.
    """
    _check(norm, eps)
    if eps == 0:
        return x.detach().clone()
    step = eps * _direction(_loss_grad(model_fn, x, y, targeted), norm)
    return torch.max(torch.min(x.detach() + step, _as(hi, x)), _as(lo, x))


def pgd(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", targeted: bool = False, lo: Any = 0.0,
        hi: Any = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent with a uniform random start in the eps-ball (Madry et al. 2018).

    ``step_size`` defaults to 2.5 * eps / steps, Madry et al.'s choice: enough to cross the ball.
    """
    _check(norm, eps)
    if steps < 1:
        raise ConfigError(f"attack: steps must be at least 1, got {steps}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    lo, hi = _as(lo, x), _as(hi, x)
    noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    if norm == "linf":
        delta = (noise * 2 - 1) * eps
    else:  # a uniform point of the l2 ball: random direction, radius eps * u^(1/d)
        direction = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        radius = torch.rand(len(x), generator=generator).to(x.device, x.dtype) ** (1.0 / x[0].numel())
        delta = direction / _per_sample_norm(direction) * (eps * radius).view(-1, *([1] * (x.dim() - 1)))
    adv = torch.max(torch.min(x + delta, hi), lo)
    for _ in range(steps):
        adv = adv + step_size * _direction(_loss_grad(model_fn, adv, y, targeted), norm)
        adv = torch.max(torch.min(x + _project(adv - x, eps, norm), hi), lo)
    return adv.detach()


def _as(bound: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(bound, dtype=x.dtype, device=x.device)


# -- attacking a run ------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """A robustness curve: accuracy (and the target-class rate when targeted) at each eps."""

    method: str
    norm: str
    split: str
    samples: int
    steps: int
    target_class: str | None
    space: str  # what eps is measured in
    eps: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    target_rate: list[float] | None = None
    path: str | None = None
    files: list[str] = field(default_factory=list)

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy[self.eps.index(0.0)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(run, split_name: str, samples: int, seed: int):
    """(x in attack space, y, model_fn, lo, hi, space) for ``samples`` examples of a split."""
    spec, pre = run.spec, run.preprocessing.inputs
    if spec.kind == "tokens":
        raise RunError(f"{run.path}: attack needs continuous inputs, but this run's inputs are tokens "
                       f"(integer ids cannot be perturbed by gradients); attack image, tabular or sequence runs")
    if spec.target != "class":
        raise RunError(f"{run.path}: attack measures accuracy, so it needs a classification run "
                       f"(this run's target is {spec.target})")
    split = run.data.split(split_name)
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    x, y = split.x[pick], split.y[pick].long()
    model = run.model.cpu().eval()  # autograd.grad(loss, x) below differentiates the input only
    if getattr(pre, "kind", None) == "image":

        def model_fn(z):  # pixels in [0, 1] -> normalized by the run's own preprocessor
            return model(pre.normalize_pixels(z))

        return x.float() / 255, y, model_fn, 0.0, 1.0, "pixels in [0, 1]"
    train = pre.batch(run.data.train.x).float()
    dims = tuple(range(train.dim() - 1))  # per feature: min/max over samples (and steps)
    lo, hi = train.amin(dim=dims), train.amax(dim=dims)
    for position, _size in spec.categorical:  # embedding indices: keep them as they are
        lo[position] = hi[position] = float("nan")
    x = pre.batch(x).float()
    if spec.categorical:  # nan bounds mean "unchanged": fix those columns to their value
        keep = torch.isnan(lo)
        lo = torch.where(keep, x, lo.expand_as(x))
        hi = torch.where(keep, x, hi.expand_as(x))
    return x, y, model, lo, hi, "standardized features, clamped to the training range"


def _target_index(run, target_class) -> int:
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_classes)]
    if str(target_class) in names:
        return names.index(str(target_class))
    raise ConfigError(f"attack: --targeted {target_class!r} is not a class of this run; "
                      f"choose one of {', '.join(names[:20])}")


def attack_run(run, method: str = "pgd", eps_list: list[float] | tuple[float, ...] | None = None, steps: int = 10,
               norm: str = "linf", split: str = "test", samples: int = 500, target_class: Any = None,
               batch_size: int = 256, seed: int = 0, out_dir: str | Path | None = None) -> AttackResult:
    """Attack ``samples`` examples of a split at each eps; write ``attack.json`` and pictures into
    ``RUN/attack/`` (or ``out_dir``). eps 0 (clean accuracy) is always included."""
    if method not in METHODS:
        raise ConfigError(f"attack: unknown method '{method}'; choose one of {', '.join(METHODS)}")
    eps_values = sorted({0.0, *(float(e) for e in (eps_list or (0.05, 0.1, 0.2, 0.3)))})
    _check(norm, eps_values[0])
    if samples < 1:
        raise ConfigError(f"attack: samples must be at least 1, got {samples}")
    x, y, model_fn, lo, hi, space = _inputs(run, split, samples, seed)
    target = None if target_class is None else _target_index(run, target_class)
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_classes)]
    result = AttackResult(method, norm, split, len(x), steps if method == "pgd" else 1,
                          None if target is None else names[target], space)
    result.target_rate = [] if target is not None else None
    generator = torch.Generator().manual_seed(seed)
    examples = None
    for eps in eps_values:
        correct = hits = 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            lob = lo[start:start + batch_size] if torch.is_tensor(lo) and lo.shape == x.shape else lo
            hib = hi[start:start + batch_size] if torch.is_tensor(hi) and hi.shape == x.shape else hi
            goal = yb if target is None else torch.full_like(yb, target)
            if method == "fgsm":
                adv = fgsm(model_fn, xb, goal, eps, norm, target is not None, lob, hib)
            else:
                adv = pgd(model_fn, xb, goal, eps, steps, None, norm, target is not None, lob, hib, generator)
            with torch.no_grad():
                pred = model_fn(adv).argmax(1)
            correct += int((pred == yb).sum())
            hits += int((pred == target).sum()) if target is not None else 0
            if start == 0 and eps == eps_values[-1]:
                with torch.no_grad():
                    examples = (xb, adv, yb, model_fn(xb).argmax(1), pred)
        result.eps.append(eps)
        result.accuracy.append(correct / len(x))
        if target is not None:
            result.target_rate.append(hits / len(x))
    out = Path(out_dir) if out_dir is not None else run.path / "attack"
    out.mkdir(parents=True, exist_ok=True)
    result.path = str(out)
    result.files.append(str(_plot_curve(result, out / "robustness.png")))
    if run.spec.kind == "image" and examples is not None:
        result.files.append(str(_plot_examples(examples, names, eps_values[-1], out / "examples.png")))
    (out / "attack.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _plot_curve(result: AttackResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result.eps, result.accuracy, marker="o", label="accuracy")
    if result.target_rate is not None:
        ax.plot(result.eps, result.target_rate, marker="s", label=f"predicted as {result.target_class}")
    ax.set_xlabel(f"eps ({result.norm}, {result.space})")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result.method.upper()} on {result.samples} {result.split} samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_examples(examples, names: list[str], eps: float, path: Path, count: int = 8) -> Path:
    """Clean images above their adversarial versions, each titled with its prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean, adv, y, clean_pred, adv_pred = examples
    count = min(count, len(clean))
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for i in range(count):
        for row, (images, preds, label) in enumerate(((clean, clean_pred, "clean"), (adv, adv_pred, "adv"))):
            image = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
            ax = axes[row][i]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            wrong = int(preds[i]) != int(y[i])
            ax.set_title(f"{label}: {names[int(preds[i])]}", fontsize=8, color="red" if wrong else "black")
            ax.axis("off")
    fig.suptitle(f"eps = {eps} (true labels: {' '.join(names[int(t)] for t in y[:count])})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
