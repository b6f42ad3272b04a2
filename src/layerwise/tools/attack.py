"""`layerwise attack`: a robustness curve of a trained classification run under FGSM or PGD.

The attacks themselves (and the input space they work in) are ``ops.attacks``, shared with
adversarial training; this module attacks a run's split at each eps, writes ``attack.json`` and the
pictures into ``RUN/attack/``, and adds the Robustness section to the report.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..core.errors import ConfigError, RunError
from ..core.sections import register_section
from ..data.kinds import input_kind
from ..ops.attacks import METHODS, AttackSpace, _check, attack_batch, pick_samples
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["AttackResult", "attack_run", "robustness_section"]


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
    if not input_kind(spec).continuous:
        raise RunError(f"{run.path}: attack needs continuous inputs, but this run's inputs are {spec.kind} "
                       f"(discrete values cannot be perturbed by gradients); attack image, tabular or sequence runs")
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


class AttackOptions(ToolOptions):
    method: str = option("pgd", "fgsm or pgd")
    eps: list[float] | None = option(None, "attack strength (repeatable; images: pixel units in [0, 1]; "
                                     "default 0.05, 0.1, 0.2, 0.3)")
    steps: int = option(10, "PGD steps")
    norm: str = option("linf", "linf or l2")
    split: Literal["test", "val", "train"] = option("test", "the split whose examples are attacked")
    samples: int = option(500, "examples of the split to attack")
    target_class: Any = option(None, "push predictions towards this class instead of away from the truth",
                               flag="--targeted", metavar="CLASS")
    batch_size: int = option(256, "examples attacked at once", cli=False)
    seed: int = option(0, "picks the examples and seeds random starts", cli=False)
    out_dir: Path | None = option(None, "write here instead of RUN/attack/ (the report is then left alone)", cli=False)
    device: Any = option("cpu", "where the attack runs", cli=False)


@register_tool("attack", AttackOptions)
def attack_run(run, options: AttackOptions) -> AttackResult:
    """Attack a trained classification RUN with FGSM or PGD: accuracy at each eps, into RUN/attack/.

    Attacks ``samples`` examples of a split at each eps; writes ``attack.json`` and pictures into
    ``RUN/attack/`` (and re-writes the run's report, whose Robustness section shows them), or into
    ``out_dir``. eps 0 (clean accuracy) is always included."""
    method, eps_list, steps, norm, split, samples, target_class, batch_size, seed, out_dir, device = (
        options.method, options.eps, options.steps, options.norm, options.split, options.samples,
        options.target_class, options.batch_size, options.seed, options.out_dir, options.device)
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
    if input_kind(run.spec).picture and examples is not None:
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


@attack_run.printer
def _print(result: AttackResult, options: AttackOptions) -> None:
    from ..core.console import metrics_table

    rows = {f"eps={e:g}": a for e, a in zip(result.eps, result.accuracy)}
    metrics_table(f"accuracy under {result.method} ({result.norm}, {result.samples} {result.split} samples)", rows)
    if result.target_rate is not None:
        metrics_table(f"predicted as target class {result.target_class}",
                      {f"eps={e:g}": r for e, r in zip(result.eps, result.target_rate)})
    print(f"results: {Path(result.path) / 'attack.json'}")
