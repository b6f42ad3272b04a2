"""Synthetic data: samples of a trained generative run (vae, gan or diffusion) as a data source.

    data: {source: synthetic, run: runs/gan-mnist-..., n: 10000}

trains a classifier on ``n`` generated samples, "train on synthetic, test on real" (Esteban et al.
2017, "Real-valued (medical) time series generation with recurrent conditional GANs"): the training
and validation splits are drawn from the generated samples; the test split is always the
generator's *real* test split, exactly as the generator's run drew it, so a run's test accuracy
measures how well what the generator learned transfers to real data. ``real: true`` adds the
generator's real training samples (its train and validation splits) to the generated ones:
generated data as augmentation.

Labels: a conditional gan or diffusion run generates every class equally often and labels each
sample with the class it was asked for. An unconditional run (a vae, a plain gan) has no labels of
its own: ``label_with: CLASSIFIER_RUN`` labels each sample with that classifier's prediction.

Generating is costly (a diffusion model runs its reverse process), so the samples are cached in the
generator's folder, ``RUN/synthetic/<key>.npz``, keyed by everything that decides them (the
weights, ``n``, ``seed``, ``steps``, ``guidance``, the labelling run, the sampler's revision): loading the data again
(evaluating, reporting, resuming) reads the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig
from ..core.errors import DataError, LayerwiseError
from ..data import SOURCES, DataSource, register_source, where
from ..data.kinds import input_kind
from ..data.spec import RawData

__all__ = ["SyntheticConfig", "SyntheticSource", "real_splits", "synthetic_samples"]


class SyntheticConfig(DataConfig):
    source: Literal["synthetic"] = "synthetic"
    run: str = Field(..., description="a trained vae, gan or diffusion run whose samples are the training data")
    n: int = Field(10000, ge=2, description="generated samples (training + validation)")
    real: bool = Field(False, description="add the generator's real training samples (augmentation)")
    label_with: str | None = Field(None, description="a classifier run that labels the samples of an "
                                                     "unconditional generator (vae, unconditional gan)")
    steps: int | None = Field(None, ge=1, description="diffusion: DDIM sampling steps (default: the model's)")
    guidance: float = Field(0.0, ge=0, description="diffusion: classifier-free guidance weight")
    seed: int = Field(0, description="seed of the samples")


def _load(path: str, what: str):
    from ..runs.run import load_run

    try:
        return load_run(path)
    except LayerwiseError as exc:
        raise DataError(f"data.{what}: {exc}") from None


def real_splits(gen) -> tuple[RawData, np.ndarray, np.ndarray]:
    """The generator's real data: (raw, rows used for training or validation, test rows or None when
    the source has a test set of its own), split exactly as the generator's run split it."""
    from ..data.pipeline import split_rows

    cfg = gen.config.data
    raw = SOURCES.get(cfg.source)().read(cfg, gen.config.task)
    train_idx, val_idx, test_idx = split_rows(np.asarray(raw.y), "class", cfg, own_test=raw.x_test is not None)
    return raw, np.sort(np.concatenate([train_idx, val_idx])), test_idx


def _cache_key(gen, cfg: SyntheticConfig) -> str:
    weights = Path(gen.path) / "model.safetensors"
    stat = weights.stat()
    labeller = None
    if cfg.label_with:
        lw = Path(cfg.label_with) / "model.safetensors"
        labeller = [str(Path(cfg.label_with).resolve()), lw.stat().st_mtime_ns if lw.is_file() else None]
    from .generate import SAMPLER_REVISION

    parts = [stat.st_size, stat.st_mtime_ns, cfg.n, cfg.seed, cfg.steps, cfg.guidance, labeller, SAMPLER_REVISION]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def synthetic_samples(gen, cfg: SyntheticConfig):
    """(stored samples, original label values) of the generator, from the cache when it has them.

    ``stored``: uint8 (n, C, H, W) images, or a DataFrame with the original columns (tables)."""
    from ..core.io import atomic_write
    from .generate import Samples, can_sample, sample_many

    if not can_sample(gen):
        from ..models.abilities import Sampler, families_with

        raise DataError(f"data.run: {gen.path} is a {gen.config.task} run; synthetic data comes from a run of a "
                        f"family that samples ({', '.join(families_with(Sampler))})")
    if gen.preprocessing.target != "class" or not gen.preprocessing.classes:
        raise DataError(f"data.run: {gen.path} was trained on data without class labels; synthetic data for a "
                        f"classifier needs a generator trained on labelled data")
    classes = list(gen.preprocessing.classes)
    cache = Path(gen.path) / "synthetic" / f"{_cache_key(gen, cfg)}.npz"
    if cache.is_file():
        saved = np.load(cache)
        stored, ids = saved["stored"], saved["labels"]
    else:
        from .generate import _num_classes

        conditional = _num_classes(gen) > 0
        if not conditional and not cfg.label_with:
            raise DataError(f"data.label_with: {gen.path} is an unconditional {gen.config.model.family} run, so its "
                            f"samples have no labels; name a classifier run to label them (data.label_with: RUN) or "
                            f"train a conditional model (model.conditional: true)")
        samples = sample_many(gen, cfg.n, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed)
        stored = samples.stored
        ids = samples.labels if conditional else _label(cfg.label_with, samples, classes)
        cache.parent.mkdir(exist_ok=True)
        atomic_write(cache, lambda tmp: _save_npz(tmp, stored=stored, labels=ids))
    values = np.asarray([classes[i] for i in ids.tolist()])
    samples = Samples(x=None, stored=stored, labels=None, kind=gen.spec.kind, preprocessor=gen.preprocessing.inputs,
                      feature_order=list(getattr(gen.config.data, "features", None) or []))
    return samples.as_inputs(), values


def _save_npz(path, **arrays) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would add ".npz" to a temporary name
        np.savez(fh, **arrays)


def _label(path: str, samples, classes: list) -> np.ndarray:
    """Class ids (the generator's) of ``samples`` as a classifier run predicts them."""
    clf = _load(path, "label_with")
    if clf.spec.target != "class" or clf.config.task != "classification":
        raise DataError(f"data.label_with: {clf.path} is a {clf.config.task} run; labelling needs a classifier")
    predicted = clf.predict(samples.as_inputs())["label"]
    lookup = {str(c): i for i, c in enumerate(classes)}
    names = [str(c) for c in clf.preprocessing.classes]
    missing = sorted(set(names) - set(lookup))
    if missing:
        raise DataError(f"data.label_with: {clf.path} predicts class(es) {', '.join(missing[:5])} that the "
                        f"generator's data does not have; use a classifier of the same data")
    return np.asarray([lookup[names[i]] for i in predicted.tolist()], dtype=np.int64)


@register_source("synthetic")
class SyntheticSource(DataSource):
    """Generated training data, the generator's real test split."""

    Config = SyntheticConfig
    description = "samples of a trained vae, gan or diffusion run; test split: the generator's real test data"

    def read(self, cfg: SyntheticConfig, task: str | None) -> RawData:
        if task not in (None, "classification"):
            raise DataError(f"task: synthetic data trains classifiers (labels are classes); received task {task!r}")
        if not Path(cfg.run).is_dir():
            raise DataError(f"data.run: run directory not found: {where(cfg.run)}; train a generative run first")
        gen = _load(cfg.run, "run")
        x, y = synthetic_samples(gen, cfg)
        raw, real_rows, test_rows = real_splits(gen)
        kind = input_kind(gen.spec)  # rows of a table or of an array, taken and joined as the kind does
        if kind.columns:
            columns = list(x.columns)
            real_x = raw.x[columns]  # the generator's feature columns, in the samples' order
            test_x = raw.x_test[columns] if raw.x_test is not None else None
        else:
            real_x, test_x = raw.x, raw.x_test
        real_y = np.asarray(raw.y)
        if test_rows is None:  # the source's own test set (MNIST's t10k)
            x_test, y_test = test_x, np.asarray(raw.y_test)
        else:
            x_test, y_test = kind.take(real_x, test_rows), real_y[test_rows]
        if cfg.real:
            x = kind.concat([x, kind.take(real_x, real_rows)])
            y = np.concatenate([y, real_y[real_rows]])
        # every class of the generator, even one its samples never show (an under-trained unconditional
        # generator labelled by a classifier): the real test split still holds it, and a classifier
        # that never saw it should score low on it, not refuse to be trained
        classes = list(gen.preprocessing.classes)
        names = raw.class_names
        if names is None and classes == list(range(len(classes))):
            names = [str(c) for c in classes]
        return RawData(gen.spec.kind, x, y, x_test, y_test, target="class", class_names=names,
                       origin=f"synthetic data of {gen.path}")
