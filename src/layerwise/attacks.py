"""Adversarial attacks on a trained classification run: FGSM and PGD, untargeted and targeted.

FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" — one
step of size eps along the sign (linf) or the direction (l2) of the loss gradient.
PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" — a random
start inside the eps-ball, then ``steps`` gradient steps, each projected back onto the ball.

Both attack the model's input and respect its valid range, through one :class:`AttackSpace` that
`layerwise attack` and adversarial training (``train.adversarial``) share: image runs are attacked in
raw pixel space [0, 1] (normalization happens inside the forward, as the preprocessor does it), so
eps is in pixel units (eps 0.3 = 30% of the intensity range). Tabular and float-sequence runs are
attacked in their standardized feature space, clamped per feature to the min/max seen in the
training split (embedding-encoded categorical columns are never perturbed). Token inputs cannot be
attacked by gradients.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError, RunError
from .report import register_section

__all__ = ["METHODS", "NORMS", "AttackResult", "AttackSpace", "attack_batch", "attack_run", "fgsm", "pgd",
           "pick_samples"]

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
        self.pixels = getattr(preprocessor, "kind", None) == "image"
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


def _inputs(run, split_name: str, samples: int, seed: int, device: torch.device | str = "cpu"):
    """(x in attack space, y, model_fn, space) for ``samples`` examples of a split, on ``device``."""
    spec = run.spec
    if spec.kind == "tokens":
        raise RunError(f"{run.path}: attack needs continuous inputs, but this run's inputs are tokens "
                       f"(integer ids cannot be perturbed by gradients); attack image, tabular or sequence runs")
    if spec.target != "class":
        raise RunError(f"{run.path}: attack measures accuracy, so it needs a classification run "
                       f"(this run's target is {spec.target})")
    space = AttackSpace(spec, run.preprocessing.inputs, run.data.train.x)
    x, y = pick_samples(run.data.split(split_name), samples, seed)
    model = run.model.to(device).eval()  # autograd.grad(loss, x) differentiates the input only
    return space.from_stored(x.to(device)), y.to(device), space.model_fn(model), space


def _target_index(run, target_class) -> int:
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_classes)]
    if str(target_class) in names:
        return names.index(str(target_class))
    raise ConfigError(f"attack: --targeted {target_class!r} is not a class of this run; "
                      f"choose one of {', '.join(names[:20])}")


def attack_run(run, method: str = "pgd", eps_list: list[float] | tuple[float, ...] | None = None, steps: int = 10,
               norm: str = "linf", split: str = "test", samples: int = 500, target_class: Any = None,
               batch_size: int = 256, seed: int = 0, out_dir: str | Path | None = None,
               device: torch.device | str = "cpu") -> AttackResult:
    """Attack ``samples`` examples of a split at each eps; write ``attack.json`` and pictures into
    ``RUN/attack/`` (and re-write the run's report, whose Robustness section shows them), or into
    ``out_dir``. eps 0 (clean accuracy) is always included."""
    if method not in METHODS:
        raise ConfigError(f"attack: unknown method '{method}'; choose one of {', '.join(METHODS)}")
    eps_values = sorted({0.0, *(float(e) for e in (eps_list or (0.05, 0.1, 0.2, 0.3)))})
    _check(norm, eps_values[0])
    if samples < 1:
        raise ConfigError(f"attack: samples must be at least 1, got {samples}")
    x, y, model_fn, space = _inputs(run, split, samples, seed, device)
    target = None if target_class is None else _target_index(run, target_class)
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_classes)]
    result = AttackResult(method, norm, split, len(x), steps if method == "pgd" else 1,
                          None if target is None else names[target], space.description)
    result.target_rate = [] if target is not None else None
    generator = torch.Generator().manual_seed(seed)
    examples = None
    for eps in eps_values:
        correct = hits = 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            goal = yb if target is None else torch.full_like(yb, target)
            adv = attack_batch(model_fn, space, xb, goal, method, eps, steps, None, norm, target is not None,
                               generator)
            with torch.no_grad():
                pred = model_fn(adv).argmax(1)
            correct += int((pred == yb).sum())
            hits += int((pred == target).sum()) if target is not None else 0
            if start == 0 and eps == eps_values[-1]:
                with torch.no_grad():
                    examples = tuple(t.cpu() for t in (xb, adv, yb, model_fn(xb).argmax(1), pred))
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
    if out_dir is None and (run.path / "metrics.json").is_file():
        run.report()  # its Robustness section shows this curve
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


# -- the report's Robustness section ---------------------------------------------------------------


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _rows(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@register_section("robustness")
def robustness_section(run) -> tuple[str, str] | None:
    """Clean vs robust accuracy of an adversarially trained run, and the curve of the last attack."""
    parts = []
    metrics = run.metrics
    robust = metrics.get("robustness")
    if robust:
        split = robust["split"]
        trained = robust.get("trained_with", {})
        parts.append(f"<p>Adversarially trained ({html.escape(str(trained.get('method', '?')).upper())}, "
                     f"eps {trained.get('eps')}, {trained.get('norm')}, ratio {trained.get('ratio')}). "
                     f"Robust accuracy: {robust['method'].upper()}-{robust['steps']} with random start at eps "
                     f"{robust['eps']} ({robust['norm']}, {html.escape(robust['space'])}) on {robust['samples']} "
                     f"{html.escape(split)} samples.</p>")
        parts.append(_rows(["", "clean accuracy", "robust accuracy"],
                           [[f"{split} split (all)", metrics.get("metrics", {}).get("accuracy", "-"), "-"],
                            [f"the {robust['samples']} attacked samples", robust[f"{split}_clean_accuracy"],
                             robust[f"{split}_robust_accuracy"]]]))
    attack_json = run.path / "attack" / "attack.json"
    if attack_json.is_file() and run.spec.target == "class":
        attack = json.loads(attack_json.read_text())
        target = attack.get("target_rate")
        parts.append(f"<p>Last <code>layerwise attack</code>: {attack['method'].upper()}"
                     f"{'-' + str(attack['steps']) if attack['method'] == 'pgd' else ''} ({attack['norm']}, "
                     f"{html.escape(attack['space'])}) on {attack['samples']} {html.escape(attack['split'])} samples"
                     f"{', targeted at class ' + html.escape(str(attack['target_class'])) if target else ''}.</p>")
        header = ["eps", "accuracy"] + ([f"predicted as {attack['target_class']}"] if target else [])
        rows = [[f"{e:g}", a] + ([target[i]] if target else [])
                for i, (e, a) in enumerate(zip(attack["eps"], attack["accuracy"]))]
        parts.append(_rows(header, rows))
        for name, alt in (("robustness.png", "robustness curve"), ("examples.png", "adversarial examples")):
            if (run.path / "attack" / name).is_file():
                parts.append(_png(run.path / "attack" / name, alt))
    return ("Robustness", "\n".join(parts)) if parts else None
