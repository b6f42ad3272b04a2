"""From a source's raw data to model-ready splits: target inference, split, fitted preprocessing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, DataError
from .kinds import input_kind
from .preprocess import Preprocessing, TargetTransform, _key, numeric_target
from .spec import DataBundle, DataSpec, RawData, Split

__all__ = ["Preprocessing", "build_bundle", "infer_target", "split_indices", "split_rows"]

MAX_INTEGER_CLASSES = 20  # an integer target with more distinct values is read as numeric


def infer_target(y: np.ndarray, task: str | None, origin: str) -> str:
    """'class' or 'numeric': from the task when given, else from the values themselves."""
    if task == "classification":
        return "class"
    if task == "regression":
        return "numeric"
    if task is not None:
        return "class"  # later tasks decide their own targets
    if y.dtype.kind in "OUSb":
        return "class"
    if y.dtype.kind in "iu":
        return "class" if len(np.unique(y)) <= MAX_INTEGER_CLASSES else "numeric"
    floats = np.issubdtype(y.dtype, np.floating)
    finite = y[np.isfinite(y)] if floats else y
    if floats and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= MAX_INTEGER_CLASSES:
        return "class"
    return "numeric"


def split_indices(n: int, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split into (kept, held out), stratified by ``labels`` when every class can be."""
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    held = _held_out(n, fraction)
    if held == 0:
        return index, index[:0]
    stratify = labels
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2 or held < len(counts) or n - held < len(counts):
            stratify = None
    kept, out = train_test_split(index, test_size=held, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(kept), np.sort(out)


def _held_out(n: int, fraction: float) -> int:
    """Samples a share of ``n`` holds out: at least one when the share is above zero."""
    return max(1, int(round(n * fraction))) if fraction > 0 else 0


def _train_rows(n: int, cfg: Any, own_test: bool) -> int:
    """Samples left for training once ``split_rows`` holds out the test and validation shares."""
    rest = n if own_test else n - _held_out(n, cfg.test_fraction)
    return rest - _held_out(rest, cfg.val_fraction) if rest > 0 else rest


def split_rows(y: np.ndarray, target: str, cfg: Any, own_test: bool = False):
    """Row indices (train, val, test) of a source's samples, as every run draws them.

    The source's own test set when it has one (``own_test``: test is None, its rows are not these),
    else a stratified share. One function, so that columns the model never saw (a sensitive
    attribute for fairness) can be lined up with a run's splits exactly.
    """
    strat = y if target == "class" else None
    if own_test:
        rest_idx, test_idx = np.arange(len(y)), None
    else:
        rest_idx, test_idx = split_indices(len(y), strat, cfg.test_fraction, cfg.split_seed)
    rest_strat = None if strat is None else strat[rest_idx]
    keep, val = split_indices(len(rest_idx), rest_strat, cfg.val_fraction, cfg.split_seed + 1)
    train_idx, val_idx = rest_idx[keep], rest_idx[val]
    if cfg.limit:
        train_idx = train_idx[: cfg.limit]
    return train_idx, val_idx, test_idx


def build_bundle(raw: RawData, cfg: Any, task: str | None) -> DataBundle:
    """Split the raw data, fit preprocessing on the training part, and describe it in a spec."""
    origin = raw.origin or cfg.source
    y = np.asarray(raw.y)
    if len(y) == 0:
        raise DataError(f"{origin}: no samples found; check the path and its contents")
    if len(y) != len(raw.x):
        raise DataError(f"{origin}: {len(raw.x)} inputs but {len(y)} targets; they must match one to one")
    target = raw.target or infer_target(y, task, origin)
    if target == "class":
        if task == "regression":
            raise DataError(f"{origin}: task 'regression' needs a numeric target; these labels are text")
        missing = _missing(y)
        if missing.any():
            raise DataError(f"{origin}: {int(missing.sum())} sample(s) have no label (first at row {int(np.argmax(missing))}); drop them")
    else:
        y = numeric_target(y, origin)

    own_test = raw.x_test is not None
    if _train_rows(len(y), cfg, own_test) < 1:
        needed = next(n for n in range(1, 10**6) if _train_rows(n, cfg, own_test) >= 1)
        raise DataError(f"{origin}: {len(y)} sample(s) are too few to split into train/val/test: data.val_fraction "
                        f"{cfg.val_fraction} and data.test_fraction {cfg.test_fraction} need at least {needed} "
                        f"samples (rows); add samples, or set both fractions to 0")
    train_idx, val_idx, test_idx = split_rows(y, target, cfg, own_test=own_test)

    classes = None
    scaler = None
    if target == "class":
        classes = _class_list(y[train_idx], raw.class_names)
        if len(classes) < 2:
            raise DataError(f"{origin}: the training split holds a single class ({classes[0]}); classification needs at least two")
    else:
        # standardised (after log1p for a skewed, non-negative target: data.target_transform of tables)
        scaler = TargetTransform.fit(y[train_idx], getattr(cfg, "target_transform", "standard"), origin,
                                     raw.target_names)

    x_all = raw.x
    try:  # the kind fits the preprocessing (tables, pixels, tokenizers: layerwise.data.kinds)
        kind = input_kind(raw)
    except ConfigError:
        raise DataError(f"{origin}: unsupported input kind '{raw.kind}'") from None
    if not kind.pixels and cfg.augment is not None:
        raise DataError(f"data.augment: augmentation applies to image data only, and {origin} is {raw.kind}; remove it")
    fitted = kind.fit(x_all, train_idx, cfg, origin)
    pre = Preprocessing(fitted.preprocessor, target, classes, scaler)

    def make(x, labels, where: str) -> Split:
        encoded = torch.as_tensor(pre.encode_labels(labels, f"{origin} ({where})"))
        return Split(kind.encode(fitted.preprocessor, x), encoded)

    train = make(kind.take(x_all, train_idx), y[train_idx], "train")
    val_split = make(kind.take(x_all, val_idx), y[val_idx], "val") if len(val_idx) else None
    if raw.x_test is not None:
        y_test = np.asarray(raw.y_test) if target == "class" else numeric_target(np.asarray(raw.y_test), origin)
        test = make(raw.x_test, y_test, "test")
    else:
        test = make(kind.take(x_all, test_idx), y[test_idx], "test") if len(test_idx) else None

    spec = DataSpec(
        kind=kind.name, target=target,
        input_shape=tuple(int(s) for s in fitted.input_shape),
        num_classes=len(classes) if classes is not None else None,
        class_names=_class_names(classes, raw.class_names),
        num_targets=None if target == "class" else (1 if y.ndim == 1 else y.shape[1]),
        target_names=raw.target_names, **fitted.spec,
    )
    return DataBundle(spec, train, val_split, test, pre)


def _missing(y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        return np.isnan(y)
    if y.dtype == object:
        return np.array([v is None or (isinstance(v, float) and v != v) or v == "" for v in y.tolist()])
    return np.zeros(len(y), dtype=bool)


def _class_list(y_train: np.ndarray, names: list[str] | None) -> list:
    values = sorted({_key(v) for v in y_train.tolist()}, key=_sort_key)
    if names is not None and all(v.isdigit() for v in values):
        # integer labels with names: keep every named class, even one absent from a small split
        return list(range(len(names)))
    return [_restore(v, y_train) for v in values]


def _class_names(classes: list | None, names: list[str] | None) -> list[str] | None:
    """Display names: the source's names for integer class ids (iris: setosa...), else the labels."""
    if classes is None:
        return None
    if names is not None and classes == list(range(len(names))):
        return [str(n) for n in names]
    return [str(c) for c in classes]


def _sort_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _restore(text: str, y: np.ndarray):
    if y.dtype.kind in "iuf":
        return int(float(text))
    if y.dtype == bool:
        return text == "True"
    return text

