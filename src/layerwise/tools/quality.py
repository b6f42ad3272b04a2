"""How good are a generative run's samples? Three measures, all made with a layerwise classifier of the
same data:

- **Fréchet distance** between the classifier's penultimate features of generated and of real test
  samples: ||mu_g - mu_r||² + Tr(S_g + S_r - 2 (S_g S_r)^½), the formula of FID (Heusel et al. 2017)
  in *this classifier's* feature space, not Inception-v3's. Numbers compare runs measured with the same
  classifier and sample size, never published FID values. The distance between two real sets (the
  classifier's training images and the test images, same size) is reported beside it: the floor a
  perfect generator would reach with this many samples.
- **Per-class accuracy** of the classifier on samples generated for each class (conditional gan and
  diffusion runs): does "draw a 3" give something the classifier reads as a 3? Unconditional runs
  get the share of samples the classifier puts in each class instead (mode coverage).
- **Train on synthetic, test on real** (Esteban et al. 2017): the classifier's own config trained on
  generated samples only (the ``synthetic`` data source) and scored on the real test split, beside the
  same config trained on as many real samples; unconditional samples are labelled by the classifier.

``layerwise quality RUN [--classifier CLF]`` / ``Run.quality`` writes ``RUN/quality/quality.json``,
a grid of the samples scored and the report's "Sample quality" section. Without a classifier one is
trained on the generator's own data config (a CNN for images, an MLP for tables) into
``RUN/quality/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, RunError
from ..core.sections import register_section
from ..data.kinds import input_kind
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["QualityResult", "frechet_distance", "penultimate_features", "quality_report"]

CLASSIFIER_EPOCHS = 5  # the default classifier's schedule: enough for a feature space, not a record


@dataclass
class QualityResult:
    run: str
    classifier: str
    samples: int
    feature_dim: int
    frechet_distance: float
    frechet_real: float  # two real sets of the same size: the floor
    per_class_accuracy: dict[str, float] | None  # conditional runs
    class_shares: dict[str, float]  # share of samples the classifier puts in each class
    conditional: bool
    tstr: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D).

    >>> rng = np.random.default_rng(0)
    >>> round(frechet_distance(rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2)) + [3, 0]))
    9
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr (S_a S_b)^½ = Tr (S_a^½ S_b S_a^½)^½: a symmetric PSD matrix, so eigenvalues are real and the
    # result stays exact where features never vary (singular covariances), unlike a general sqrtm
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


@torch.no_grad()
def penultimate_features(clf, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), logits (N, classes)) of a classifier run for ``inputs``: one of its own splits
    (a :class:`Split`), or anything ``read_inputs`` takes (uint8 images, a DataFrame). The features are
    what its final linear layer (``model.head``) reads."""
    from ..data.inputs import read_inputs
    from ..data.loader import BatchLoader
    from ..data.spec import Split

    split = inputs if isinstance(inputs, Split) else read_inputs(inputs, clf).split
    model = clf.model.cpu().eval()
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().flatten(1)))
    logits = []
    try:
        for x, _ in BatchLoader(split, clf.config.evaluate.batch_size, transform=clf.preprocessing.inputs.batch):
            logits.append(model(x).float())
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy(), torch.cat(logits).numpy()


def _rows(split, count: int, seed: int):
    """``count`` rows of a split drawn without replacement (seeded), as a Split."""
    from ..data.spec import Split

    pick = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(len(split), min(count, len(split)),
                                                                      replace=False)))
    return Split(split.x[pick], split.y[pick])


def _grid_subset(samples, per_class: int = 10, unlabelled: int = 100):
    """A readable share of the scored samples: the first ``per_class`` of each class (conditional
    runs, whose samples come in class blocks), else the first ``unlabelled``."""
    from dataclasses import replace

    if samples.labels is None:
        idx = np.arange(min(unlabelled, len(samples)))
    else:
        idx = np.concatenate([np.nonzero(samples.labels == c)[0][:per_class] for c in np.unique(samples.labels)])
    labels = None if samples.labels is None else samples.labels[idx]
    return replace(samples, x=samples.x[torch.as_tensor(idx)], stored=samples.stored[idx], labels=labels)


def _classifier(run, classifier, epochs: int):
    from ..runs.run import load_run
    from ..runs.training import train

    if classifier is not None:
        clf = classifier if hasattr(classifier, "predict") else load_run(classifier)
        if clf.config.task != "classification":
            raise ConfigError(f"--classifier: {clf.path} is a {clf.config.task} run; quality needs a classifier of "
                              f"the generator's data")
        same_shape = not input_kind(run.spec).picture or clf.spec.input_shape == run.spec.input_shape
        if clf.spec.kind != run.spec.kind or not same_shape:
            raise ConfigError(f"--classifier: {clf.path} reads {clf.spec.kind} inputs {tuple(clf.spec.input_shape)}; "
                              f"the generator makes {run.spec.kind} {tuple(run.spec.input_shape)}")
        return clf
    existing = sorted((run.path / "quality").glob("classifier-*/model.safetensors"))
    if existing:  # trained by an earlier call: reuse it, so repeated calls measure with one feature space
        return load_run(existing[-1].parent)
    family = "cnn" if input_kind(run.spec).picture else "mlp"
    cfg = {"name": "classifier", "data": run.config.data.model_dump(mode="json"), "model": {"family": family},
           "task": "classification", "train": {"epochs": epochs, "seed": 0, "progress": False}}
    return train(cfg, runs_dir=run.path / "quality", quiet=True)


def _train_like(clf, data: dict[str, Any], name: str, runs_dir: Path):
    """The classifier's own config on other data: the same model, schedule and seed."""
    from ..runs.training import train

    cfg = clf.config.to_dict()
    cfg["name"] = name
    cfg["data"] = data
    cfg["train"] = {**cfg["train"], "progress": False}
    return train(cfg, runs_dir=runs_dir, quiet=True)


def _tstr(run, clf, n: int, steps, guidance: float, seed: int, conditional: bool) -> dict[str, Any]:
    clf_data = clf.config.data.model_dump(mode="json")
    shared_keys = ("val_fraction", "split_seed", "normalize", "augment", "sampler")
    common = {k: clf_data[k] for k in shared_keys if k in clf_data}
    synthetic = {"source": "synthetic", "run": str(run.path), "n": n, "steps": steps, "guidance": guidance,
                 "seed": seed, "label_with": None if conditional else str(clf.path), **common}
    out = run.path / "quality"
    on_synthetic = _train_like(clf, synthetic, "tstr-synthetic", out)
    real_n = max(1, int(round(n * (1 - clf_data.get("val_fraction", 0.1)))))  # training rows, as synthetic's
    on_real = _train_like(clf, {**clf_data, "limit": real_n}, "tstr-real", out)
    acc = lambda r: float(r.metrics["metrics"]["accuracy"])  # noqa: E731
    return {"samples": n, "synthetic_accuracy": acc(on_synthetic), "real_accuracy": acc(on_real),
            "classifier_accuracy": acc(clf), "synthetic_run": str(on_synthetic.path), "real_run": str(on_real.path),
            "test_samples": len(on_synthetic.data.test)}


class QualityOptions(ToolOptions):
    classifier: Any = option(None, "a classifier run of the same data (default: train one into RUN/quality/)",
                             metavar="RUN")
    n: int = option(2000, "samples scored", ge=10)
    tstr: bool = option(True, "train-on-synthetic / test-on-real (two training runs); --no-tstr skips it",
                        flag="--no-tstr")
    tstr_n: int | None = option(None, "generated training samples of train-on-synthetic (default: n)", ge=2)
    steps: int | None = option(None, "diffusion: DDIM sampling steps", ge=1)
    guidance: float = option(0.0, "diffusion: classifier-free guidance")
    seed: int = option(0, "seeds the samples and the real rows compared")
    classifier_epochs: int = option(CLASSIFIER_EPOCHS, "epochs of the default classifier", cli=False)
    as_json: bool = option(False, "print the result as JSON", flag="--json", python=False)


@register_tool("quality", QualityOptions)
def quality_report(run, options: QualityOptions) -> QualityResult:
    """Sample quality of a vae / gan / diffusion RUN: Fréchet distance, per-class accuracy, train on synthetic.

    Scores ``n`` samples with a classifier run (trained on the generator's data when
    ``classifier`` is None); see the module docstring. ``tstr_n``: generated training samples of the
    train-on-synthetic comparison (default ``n``). Writes ``RUN/quality/`` and the report's Sample
    quality section."""
    classifier, n, tstr, tstr_n, steps, guidance, seed, classifier_epochs = (
        options.classifier, options.n, options.tstr, options.tstr_n, options.steps, options.guidance, options.seed,
        options.classifier_epochs)
    from ..core.io import atomic_write
    from .generate import _num_classes, can_sample, image_grid, sample_many

    if not can_sample(run):
        raise RunError(f"{run.path}: quality scores the samples of vae, gan and diffusion runs; this run's task is "
                       f"{run.config.task}")
    if n < 10:
        raise ConfigError(f"--n: the Fréchet distance needs at least 10 samples; received {n}")
    if run.preprocessing.target != "class":
        raise RunError(f"{run.path}: quality needs a generator trained on labelled data (a classifier scores it)")
    clf = _classifier(run, classifier, classifier_epochs)
    conditional = _num_classes(run) > 0
    samples = sample_many(run, n, steps=steps, guidance=guidance, seed=seed)
    gen_stored = samples.as_inputs()
    gen_features, gen_logits = penultimate_features(clf, gen_stored)
    test = clf.data.test if clf.data.test is not None else clf.data.val
    real_features, _ = penultimate_features(clf, _rows(test, n, seed))
    floor_features, _ = penultimate_features(clf, _rows(clf.data.train, len(real_features), seed + 1))
    names = [str(c) for c in clf.spec.class_names]
    predicted = gen_logits.argmax(1)
    shares = {names[c]: float((predicted == c).mean()) for c in range(len(names))}
    per_class = None
    if conditional:
        gen_names = [str(c) for c in run.preprocessing.classes]
        truth = np.array([names.index(gen_names[i]) if gen_names[i] in names else -1 for i in samples.labels])
        per_class = {gen_names[c]: float((predicted[samples.labels == c] == truth[samples.labels == c]).mean())
                     for c in np.unique(samples.labels)}
        per_class["mean"] = float(np.mean(list(per_class.values())))
    out = run.path / "quality"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if samples.pictures:
        image_grid(_grid_subset(samples)).save(out / "samples.png")  # some of the samples scored, not all n
        files.append("quality/samples.png")
    result = QualityResult(run=str(run.path), classifier=str(clf.path), samples=n,
                           feature_dim=int(gen_features.shape[1]),
                           frechet_distance=frechet_distance(gen_features, real_features),
                           frechet_real=frechet_distance(floor_features, real_features),
                           per_class_accuracy=per_class, class_shares=shares, conditional=conditional, files=files)
    if tstr:
        result.tstr = _tstr(run, clf, tstr_n or n, steps, guidance, seed, conditional)
    atomic_write(out / "quality.json", lambda tmp: Path(tmp).write_text(json.dumps(result.to_dict(), indent=2)))
    run.report()
    return result


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


@register_section("quality")
def _quality_section(run):
    path = run.path / "quality" / "quality.json"
    if not path.is_file():
        return None
    from html import escape

    q = json.loads(path.read_text())
    rows = [("Fréchet distance (generated vs real test)", _fmt(q["frechet_distance"])),
            ("Fréchet distance (real train vs real test, the floor)", _fmt(q["frechet_real"])),
            ("samples / feature dimensions", f"{q['samples']} / {q['feature_dim']}")]
    if q.get("per_class_accuracy"):
        rows.append(("classifier accuracy on generated samples, mean over classes",
                     _fmt(q["per_class_accuracy"]["mean"])))
    if q.get("tstr"):
        t = q["tstr"]
        rows += [(f"train on {t['samples']} synthetic, test on real: accuracy", _fmt(t["synthetic_accuracy"])),
                 ("train on as many real samples: accuracy", _fmt(t["real_accuracy"])),
                 ("the scoring classifier (all real training data): accuracy", _fmt(t["classifier_accuracy"]))]
    table = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    per = q.get("per_class_accuracy") or q["class_shares"]
    title = "per-class accuracy of generated samples" if q.get("per_class_accuracy") else \
        "share of samples the classifier puts in each class"
    per_rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{v:.3f}</td></tr>" for k, v in per.items())
    parts = [f"<p>Scored with classifier <code>{escape(q['classifier'])}</code>. The Fréchet distance is measured "
             f"in that classifier's penultimate features: it compares runs scored with the same classifier and "
             f"sample size, not published (Inception) FID values.</p>",
             f"<table>{table}</table>", f"<h3>{escape(title)}</h3><table>{per_rows}</table>"]
    if "quality/samples.png" in q.get("files", []):
        parts.append('<img src="quality/samples.png" alt="samples scored" style="max-width:100%">')
    return "Sample quality", "\n".join(parts)


@quality_report.printer
def _print(result: QualityResult, options: QualityOptions) -> None:
    from ..core.console import metrics_table

    if options.as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    rows = {"frechet_distance": result.frechet_distance, "frechet_real_floor": result.frechet_real}
    if result.per_class_accuracy:
        rows["per_class_accuracy_mean"] = result.per_class_accuracy["mean"]
    if result.tstr:
        rows["tstr_synthetic_accuracy"] = result.tstr["synthetic_accuracy"]
        rows["tstr_real_accuracy"] = result.tstr["real_accuracy"]
    metrics_table(f"sample quality ({result.samples} samples)", rows)
    print(f"classifier: {result.classifier}")
    print(f"report:     {Path(result.run) / 'report.html'}")
