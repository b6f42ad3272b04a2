"""Adversarial attacks on a classifier's inputs: FGSM and PGD, untargeted and targeted.

FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" — one
step of size eps along the sign (linf) or the direction (l2) of the loss gradient.
PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" — a random
start inside the eps-ball, then ``steps`` gradient steps, each projected back onto the ball.

Both attack the model's input and respect its valid range, through one :class:`AttackSpace` that
`layerwise attack` and adversarial training (``task.adversarial_training``) share: image runs are attacked in
raw pixel space [0, 1] (normalization happens inside the forward, as the preprocessor does it), so
eps is in pixel units (eps 0.3 = 30% of the intensity range). Tabular and float-sequence runs are
attacked in their standardized feature space, clamped per feature to the min/max seen in the
training split (embedding-encoded categorical columns are never perturbed). Token inputs cannot be
attacked by gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..data.kinds import input_kind

__all__ = ["METHODS", "NORMS", "AttackSpace", "attack_batch", "fgsm", "pgd", "pick_samples"]

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
    """Gradient of the loss to ascend: the true-label loss, or minus the target-label loss.

    ``autograd.grad`` differentiates the input only: nothing accumulates in the parameters' ``.grad``
    (adversarial training relies on it, between its own forward and the loop's backward)."""
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


# -- where a run's inputs are attacked ------------------------------------------------------------


class AttackSpace:
    """The space attacks perturb a run's inputs in: the way there from stored and from preprocessed
    inputs, the way back to what the model reads, and the valid range.

    Images: pixels in [0, 1], normalized inside the forward by the run's own preprocessor. Other
    continuous inputs: the standardized features the model reads, bounded per feature by the
    training split's min/max; embedding-encoded categorical columns are held fixed.

    >>> space = AttackSpace(run.spec, run.preprocessing.inputs, run.data.train.x)   # doctest: +SKIP
    >>> adv = pgd(space.model_fn(model), z, y, 0.1, lo=space.lower(z), hi=space.upper(z))  # doctest: +SKIP
    """

    def __init__(self, spec, preprocessor, train_x: torch.Tensor):
        self.preprocessor = preprocessor
        self.pixels = input_kind(spec).pixels  # stored uint8 pixels: attacked in [0, 1], normalised in the forward
        self.categorical = [position for position, _size in spec.categorical]
        self._bounds: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.pixels:
            self.description = "pixels in [0, 1]"
            self._lo = self._hi = None
        else:
            self.description = "standardized features, clamped to the training range"
            train = preprocessor.batch(train_x).float()
            dims = tuple(range(train.dim() - 1))  # per feature: min/max over samples (and steps)
            self._lo, self._hi = train.amin(dim=dims), train.amax(dim=dims)

    def from_stored(self, x: torch.Tensor) -> torch.Tensor:
        """Stored split inputs (uint8 images, encoded features) to the attack space."""
        return x.float() / 255 if self.pixels else self.preprocessor.batch(x).float()

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed batches, as the training loader yields them, to the attack space (clamped to
        the valid range: augmentation noise can push normalized pixels outside it)."""
        z = self.preprocessor.denormalize_pixels(x) if self.pixels else x
        return torch.max(torch.min(z, self.upper(z)), self.lower(z))

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        return self.preprocessor.normalize_pixels(z) if self.pixels else z

    def model_fn(self, model: torch.nn.Module) -> ModelFn:
        """The model as a function of attack-space inputs."""
        return lambda z: model(self.to_model(z))

    def _device_bounds(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._bounds:
            self._bounds[device] = (self._lo.to(device), self._hi.to(device))
        return self._bounds[device]

    def _bound(self, z: torch.Tensor, upper: bool) -> torch.Tensor:
        if self.pixels:
            return torch.ones((), dtype=z.dtype, device=z.device) if upper else torch.zeros((), dtype=z.dtype,
                                                                                          device=z.device)
        bound = self._device_bounds(z.device)[int(upper)].to(z.dtype).expand_as(z)
        if self.categorical:  # embedding indices: the bounds pin them to their own value
            bound = bound.clone()
            bound[..., self.categorical] = z[..., self.categorical]
        return bound

    def lower(self, z: torch.Tensor) -> torch.Tensor:
        """The lowest valid value of each coordinate of ``z`` (broadcasts against it)."""
        return self._bound(z, upper=False)

    def upper(self, z: torch.Tensor) -> torch.Tensor:
        return self._bound(z, upper=True)


def attack_batch(model_fn: ModelFn, space: AttackSpace, z: torch.Tensor, y: torch.Tensor, method: str, eps: float,
                 steps: int = 10, step_size: float | None = None, norm: str = "linf", targeted: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM or PGD on a batch already in the attack space, within its valid range."""
    lo, hi = space.lower(z), space.upper(z)
    if method == "fgsm":
        return fgsm(model_fn, z, y, eps, norm, targeted, lo, hi)
    return pgd(model_fn, z, y, eps, steps, step_size, norm, targeted, lo, hi, generator)


def pick_samples(split, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` stored inputs and labels of a split, drawn once per seed (in split order)."""
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return split.x[pick], split.y[pick].long()
