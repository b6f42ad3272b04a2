"""Preprocessing fitted on the training split only, and saved with the run as plain JSON.

A tabular preprocessor imputes, standardizes and encodes columns into a float matrix; an image
preprocessor turns stored uint8 batches into normalized floats (on the device, per batch) and
applies augmentation to training batches. Both record everything needed to process new inputs at
prediction time, so a run directory alone can predict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DataError

__all__ = ["Preprocessing", "TabularPreprocessor", "ImagePreprocessor", "TargetScaler", "preprocessor_from_dict",
           "numeric_or_junk", "numeric_target", "register_preprocessor"]

PREPROCESSORS: dict[str, type] = {}  # kind -> class with to_dict/from_dict/batch


def register_preprocessor(kind: str):
    """Class decorator: input preprocessing a run can save (``to_dict``) and rebuild (``from_dict``).

    Every preprocessor also has ``batch(x, train, seed)``, applied to each batch on its device.
    """

    def add(cls):
        cls.kind = kind
        PREPROCESSORS[kind] = cls
        return cls

    return add

MAX_ONEHOT_LEVELS = 50  # beyond this a one-hot column would dwarf the rest: use embeddings
IDENTIFIER_SHARE = 0.9  # a column with a distinct value in 90% of its rows identifies rows, it describes nothing


def numeric_or_junk(column, name: str, origin: str):
    """Decide whether a text column is numeric with junk in it (an error) or categorical.

    A column is called numeric-with-junk when at least 90% of its non-empty values parse as numbers
    but some do not: that is almost always a data-entry problem, not a category.
    """
    import pandas as pd

    values = column.dropna()
    if len(values) == 0:
        return None
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna()
    if bad.any() and bad.mean() <= 0.1:
        first = values[bad].iloc[0]
        row = values[bad].index[0]
        raise DataError(
            f"{origin}: column '{name}' is numeric but has {int(bad.sum())} non-numeric value(s) "
            f"(first: {first!r} at row {row}); clean them, or list the column in data.categorical_columns"
        )
    return parsed if not bad.any() else None


def numeric_target(y: np.ndarray, origin: str) -> np.ndarray:
    """Regression targets as float64; text that parses as numbers is converted, anything else refused."""
    if y.dtype.kind in "OUS":
        import pandas as pd

        parsed = numeric_or_junk(pd.Series(y), "target", origin)
        if parsed is None:
            raise DataError(f"{origin}: the target holds text; use task: classification or fix its values")
        y = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy()
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        bad = int(np.argmax(~np.isfinite(y.reshape(len(y), -1)).any(axis=1)))
        raise DataError(f"{origin}: the target has missing or infinite values (first at row {bad}); drop those rows")
    return y


@register_preprocessor("tabular")
class TabularPreprocessor:
    """Impute, standardize and encode a DataFrame's columns (numeric and categorical)."""

    def __init__(self, numeric: list[str], categorical: list[str], encoding: str = "auto",
                 impute: str = "mean", normalize: bool = True, origin: str = "data"):
        self.numeric = numeric
        self.categorical = categorical
        self.encoding = encoding
        self.impute = impute
        self.normalize = normalize
        self.origin = origin
        self.fill_: dict[str, float] = {}
        self.mean_: dict[str, float] = {}
        self.std_: dict[str, float] = {}
        self.levels_: dict[str, list[str]] = {}
        self.encodings_: dict[str, str] = {}  # per categorical column: "onehot" or "embedding"
        # numeric columns holding only whole numbers, with their training range: generated rows
        # (layerwise.tools.generate) come back as integers within it, like the original column
        self.integer_: dict[str, list[float]] = {}

    def fit(self, frame) -> "TabularPreprocessor":
        for col in self.numeric:
            values = self._numeric(frame, col)
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                raise DataError(f"{self.origin}: column '{col}' has no values in the training split; drop it from data.features")
            fill = float(np.median(finite) if self.impute == "median" else finite.mean())
            filled = np.where(np.isfinite(values), values, fill)
            self.fill_[col] = fill
            self.mean_[col] = float(filled.mean()) if self.normalize else 0.0
            std = float(filled.std()) if self.normalize else 1.0
            self.std_[col] = std if std > 1e-12 else 1.0
            if np.all(finite == np.round(finite)):
                self.integer_[col] = [float(finite.min()), float(finite.max())]
        for col in self.categorical:
            present = frame[col].dropna()
            levels = sorted({str(v) for v in present})
            self.levels_[col] = levels
            self.encodings_[col] = self._encoding_for(col, len(levels), len(present))
        return self

    def _encoding_for(self, col: str, levels: int, rows: int) -> str:
        """One-hot for a few levels, an embedding for many (``auto``); an identifier is refused."""
        if self.encoding == "embedding":
            return "embedding"
        if levels <= MAX_ONEHOT_LEVELS:
            return "onehot"
        if self.encoding == "onehot":
            raise DataError(
                f"{self.origin}: column '{col}' has {levels} distinct text values, too many to one-hot encode; "
                f"add it to data.drop if it is an identifier, or set data.categorical_encoding: auto (or embedding)")
        if levels >= IDENTIFIER_SHARE * rows:
            raise DataError(
                f"{self.origin}: column '{col}' looks like an identifier ({levels} distinct values in {rows} rows): "
                f"nothing learnt from it carries over to new rows; add it to data.drop, or set "
                f"data.categorical_encoding: embedding to embed it anyway")
        return "embedding"

    def encoding_of(self, col: str) -> str:
        """How the categorical column ``col`` is encoded: ``onehot`` or ``embedding``."""
        return self.encodings_[col]

    def _numeric(self, frame, col: str, origin: str | None = None) -> np.ndarray:
        import pandas as pd

        origin = origin or self.origin
        if col not in frame.columns:
            raise DataError(f"{origin}: column '{col}' is missing; the model was trained with it")
        column = frame[col]
        if column.dtype == object or str(column.dtype).startswith(("string", "str")):
            parsed = numeric_or_junk(column, col, origin)
            if parsed is None:
                raise DataError(f"{origin}: column '{col}' should be numeric but holds text; fix its values")
            column = pd.to_numeric(column, errors="coerce")
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = np.isinf(values)
        if infinite.any():
            first = int(np.argmax(infinite))
            raise DataError(f"{origin}: column '{col}' has {int(infinite.sum())} infinite value(s) (first: {values[first]} "
                            f"at row {frame.index[first]}); replace them with finite numbers, or leave the cells empty "
                            f"to impute them")
        return values

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col in self.categorical:
            if self.encoding_of(col) == "onehot":
                names += [f"{col}={level}" for level in self.levels_[col]] + [f"{col}=<other>"]
            else:
                names.append(col)
        return names

    @property
    def categorical_slots(self) -> list[tuple[int, int]]:
        """(column position, cardinality incl. the unknown level) of embedding-encoded columns."""
        slots, position = [], len(self.numeric)
        for col in self.categorical:
            cardinality = len(self.levels_[col]) + 1
            if self.encoding_of(col) == "embedding":
                slots.append((position, cardinality))
                position += 1
            else:
                position += cardinality
        return slots

    def transform(self, frame, origin: str | None = None) -> np.ndarray:
        """Encode a frame; ``origin`` names it in messages (default: the data fitted on)."""
        origin = origin or self.origin
        blocks = []
        for col in self.numeric:
            values = self._numeric(frame, col, origin)
            values = np.where(np.isfinite(values), values, self.fill_[col])
            blocks.append(((values - self.mean_[col]) / self.std_[col])[:, None])
        for col in self.categorical:
            if col not in frame.columns:
                raise DataError(f"{origin}: column '{col}' is missing; the model was trained with it")
            levels = self.levels_[col]
            lookup = {level: i for i, level in enumerate(levels)}
            # unseen and missing values go to one extra level, so new data never crashes
            codes = np.array([lookup.get(str(v), len(levels)) if v == v and v is not None else len(levels)
                              for v in frame[col].tolist()])
            if self.encoding_of(col) == "onehot":
                blocks.append(np.eye(len(levels) + 1)[codes])
            else:
                blocks.append(codes[:, None].astype(np.float64))
        if not blocks:
            raise DataError(f"{origin}: no feature columns left; check data.features")
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tabular", "numeric": self.numeric, "categorical": self.categorical,
                "encoding": self.encoding, "impute": self.impute, "normalize": self.normalize,
                "fill": self.fill_, "mean": self.mean_, "std": self.std_, "levels": self.levels_,
                "encodings": self.encodings_, "integer": self.integer_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TabularPreprocessor":
        pre = cls(data["numeric"], data["categorical"], data["encoding"], data["impute"], data["normalize"])
        pre.fill_, pre.mean_, pre.std_, pre.levels_ = data["fill"], data["mean"], data["std"], data["levels"]
        pre.integer_ = data.get("integer", {})  # absent in runs saved before it was recorded
        # runs saved before per-column encodings used one encoding for every categorical column
        pre.encodings_ = data.get("encodings") or {col: data["encoding"] for col in data["categorical"]}
        return pre

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        return x  # already float and standardized when stored


@register_preprocessor("image")
class ImagePreprocessor:
    """uint8 (N, C, H, W) images or (N, T, C, H, W) videos → normalized float, with optional
    augmentation of training batches (each frame on its own)."""

    def __init__(self, channels: int, size: tuple[int, int], normalize: bool = True, augment: dict | None = None):
        self.channels = channels
        self.size = tuple(size)
        self.normalize = normalize
        self.augment = augment or None
        self._stats_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean_ = [0.0] * channels
        self.std_ = [1.0] * channels

    def fit(self, images: torch.Tensor) -> "ImagePreprocessor":
        if self.normalize:
            # statistics from a strided sample: exact enough and bounded in cost for big sets
            images = images.reshape(-1, *images.shape[-3:])  # video: every frame counts as an image
            sample = images[:: max(1, len(images) // 20000)].float().div_(255)
            self._stats_cache.clear()
            self.mean_ = sample.mean(dim=(0, 2, 3)).tolist()
            self.std_ = [max(s, 1e-6) for s in sample.std(dim=(0, 2, 3)).tolist()]
        return self

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        """Normalize a stored uint8 batch on its device; augment it when ``train``.

        ``seed`` makes the augmentation of this batch reproducible (the loader derives it from
        the run's seed, the epoch and the batch index, so a resumed run augments identically).
        """
        frames = x.shape[:-3]  # (N,) for images, (N, T) for video: frames are normalized alike
        x = x.reshape(-1, *x.shape[-3:]).float().div_(255)
        generator = None
        if train and self.augment:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            x = _augment(x, self.augment, generator)
        x = self.normalize_pixels(x)
        if train and self.augment and self.augment.get("noise"):
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + self.augment["noise"] * noise
        return x.reshape(*frames, *x.shape[1:])

    def normalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (..., C, H, W), to the normalized floats the model sees (differentiable:
        attacks perturb pixels and normalize inside the forward)."""
        mean, std = self._stats(x.device)
        return (x - mean[0]) / std[0]

    def denormalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize_pixels`: model inputs back to pixels (adversarial training
        perturbs the preprocessed training batches in pixel space)."""
        mean, std = self._stats(x.device)
        return x * std[0] + mean[0]

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, C, 1, 1) tensors, made once per device rather than per batch."""
        if device not in self._stats_cache:
            self._stats_cache[device] = (torch.tensor(self.mean_, device=device).view(1, -1, 1, 1),
                                         torch.tensor(self.std_, device=device).view(1, -1, 1, 1))
        return self._stats_cache[device]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", "channels": self.channels, "size": list(self.size), "normalize": self.normalize,
                "augment": self.augment, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImagePreprocessor":
        pre = cls(data["channels"], tuple(data["size"]), data["normalize"], data.get("augment"))
        pre.mean_, pre.std_ = data["mean"], data["std"]
        return pre


def _augment(x: torch.Tensor, cfg: dict, generator: torch.Generator | None) -> torch.Tensor:
    """Random shift, rotation, zoom and flip of a batch in one affine resampling (vectorized)."""
    n = x.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(cfg.get("rotation", 0.0)))
    scale = 1 + uniform(cfg.get("scale", 0.0))
    shift = torch.stack([uniform(cfg.get("shift", 0.0)), uniform(cfg.get("shift", 0.0))], dim=1) * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.get("flip") else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class TargetScaler:
    """Standardizes regression targets on the training split; predictions are scaled back."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, y: np.ndarray) -> "TargetScaler":
        y = y.reshape(len(y), -1)
        std = y.std(axis=0)
        return cls(y.mean(axis=0).tolist(), np.where(std > 1e-12, std, 1.0).tolist())

    def transform(self, y: np.ndarray) -> np.ndarray:
        # C order: several target columns of a DataFrame arrive column-major, and batches sliced
        # from a column-major tensor are not contiguous (metrics call .view on them)
        scaled = (y.reshape(len(y), -1) - np.array(self.mean)) / np.array(self.std)
        return np.ascontiguousarray(scaled, dtype=np.float32)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=y.device, dtype=y.dtype)
        std = torch.tensor(self.std, device=y.device, dtype=y.dtype)
        return y * std + mean


def preprocessor_from_dict(data: dict[str, Any]):
    from .. import data as _sources  # noqa: F401  (importing the sources registers their preprocessors)

    return PREPROCESSORS[data["kind"]].from_dict(data)


class Preprocessing:
    """Everything fitted on the training split: input preprocessing, class names, target scaling."""

    def __init__(self, inputs: Any, target: str, classes: list | None = None, scaler: TargetScaler | None = None):
        self.inputs = inputs  # TabularPreprocessor | ImagePreprocessor
        self.target = target  # "class" | "numeric"
        self.classes = classes  # original label values, index = class id
        self.scaler = scaler

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if self.target == "numeric":
            return self.scaler.transform(np.asarray(y, dtype=np.float64)) if self.scaler else y.astype(np.float32)
        lookup = {_key(c): i for i, c in enumerate(self.classes)}
        codes = np.array([lookup.get(_key(v), -1) for v in y.tolist()], dtype=np.int64)
        if (codes < 0).any():
            unseen = sorted({str(v) for v, c in zip(y.tolist(), codes) if c < 0})[:5]
            raise DataError(
                f"{origin}: label(s) {', '.join(unseen)} are out of range: the training labels are "
                f"{', '.join(map(str, self.classes[:12]))}{'...' if len(self.classes) > 12 else ''}; fix or drop those rows"
            )
        return codes

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs.to_dict(), "target": self.target,
                "classes": None if self.classes is None else [_plain(c) for c in self.classes],
                "scaler": None if self.scaler is None else {"mean": self.scaler.mean, "std": self.scaler.std}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        scaler = TargetScaler(**data["scaler"]) if data.get("scaler") else None
        return cls(preprocessor_from_dict(data["inputs"]), data["target"], data.get("classes"), scaler)


def _key(value: Any) -> str:
    """Labels compare as text so that 1, 1.0, '1' and np.int64(1) are one class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
