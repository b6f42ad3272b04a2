"""Data sets that ship with scikit-learn: no download, so the default path works offline.

Besides scikit-learn's own sets, ``digit_sequences`` builds short videos from its 8x8 digits:
each sample is ``sequence_length`` digit images in a row, labelled with the sum of their digits
(classes 0 .. 9 x length), so no single frame decides the label: a model must recognise every frame
and add them up, which a recurrent reader does step by step. (A sum *modulo 10* was tried first and
dropped: like parity, it is nearly independent of any ``length - 1`` frames, so a small model got
no training signal beyond two frames.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..core.config import DataConfig
from . import DataSource, register_source
from .spec import DataBundle, RawData, Split

__all__ = ["BUILTINS", "BuiltinConfig", "BuiltinSource", "digit_sequences"]

BUILTINS = {
    # name: (loader, input kind, target)
    "digits": ("load_digits", "image", "class"),
    "digit_sequences": ("load_digits", "video", "class"),
    "iris": ("load_iris", "tabular", "class"),
    "wine": ("load_wine", "tabular", "class"),
    "breast_cancer": ("load_breast_cancer", "tabular", "class"),
    "diabetes": ("load_diabetes", "tabular", "numeric"),
}


class BuiltinConfig(DataConfig):
    source: Literal["builtin"] = "builtin"
    name: Literal["digits", "digit_sequences", "iris", "wine", "breast_cancer", "diabetes"] = Field(
        "digits", description="a data set bundled with scikit-learn (digit_sequences: videos of its digits)"
    )
    sequence_length: int = Field(4, ge=2, description="digit_sequences only: frames (digits) in each sequence, at least 2")
    n_sequences: int = Field(3000, ge=10, description="digit_sequences only: sequences drawn in all (train + val + test)")


def _digit_pixels(images: np.ndarray) -> np.ndarray:
    """sklearn's 0..16 intensities as uint8 pixels, like any other image."""
    return np.round(images * (255 / 16)).clip(0, 255).astype(np.uint8)


def digit_sequences(images: np.ndarray, digits: np.ndarray, count: int, length: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` sequences of ``length`` frames drawn with replacement from ``images`` (N, 8, 8).

    Returns the frames (count, length, 1, 8, 8) uint8, the labels (sum of the digits) and
    the index of each frame's image in ``images`` (count, length).

    >>> x, y, idx = digit_sequences(np.zeros((5, 8, 8)), np.arange(5), 3, 2, np.random.default_rng(0))
    >>> x.shape, bool((y == idx.sum(axis=1)).all())
    ((3, 2, 1, 8, 8), True)
    """
    idx = rng.integers(0, len(images), size=(count, length))
    frames = _digit_pixels(images[idx])[:, :, None]  # (count, T, 1, 8, 8)
    return frames, digits[idx].sum(axis=1), idx


@register_source("builtin")
class BuiltinSource(DataSource):
    """digits (8x8 images), digit_sequences (videos of digits), iris, wine, breast_cancer (tabular
    classes), diabetes (regression)."""

    Config = BuiltinConfig
    description = "data sets bundled with scikit-learn: digits, digit_sequences, iris, wine, breast_cancer, diabetes"

    def read(self, cfg: BuiltinConfig, task: str | None) -> RawData:
        import pandas as pd
        import sklearn.datasets

        loader, kind, target = BUILTINS[cfg.name]
        bunch = getattr(sklearn.datasets, loader)()
        if kind == "image":
            pixels = _digit_pixels(bunch.images)[:, None]  # (N, 1, 8, 8)
            return RawData("image", pixels, bunch.target, target=target,
                           class_names=[str(n) for n in bunch.target_names], origin=f"builtin:{cfg.name}")
        frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
        names = [str(n) for n in bunch.target_names] if target == "class" else None
        return RawData("tabular", frame, bunch.target, target=target, class_names=names,
                       target_names=None if names else ["target"], origin=f"builtin:{cfg.name}")

    def load(self, cfg: BuiltinConfig, task: str | None) -> DataBundle:
        if cfg.name == "digit_sequences":
            return self._load_sequences(cfg, task)
        return super().load(cfg, task)

    def _load_sequences(self, cfg: BuiltinConfig, task: str | None) -> DataBundle:
        """Sequences of digits whose label is the sum of the digits.

        There are only 1,797 digit images, so frames are reused across sequences: a new sequence is
        a new *combination* of images. To keep test scores honest the images themselves are split
        first (stratified by digit, seeded by ``split_seed``) into disjoint train, val and test
        pools, and each split's sequences draw frames from its own pool only, so no test (or val)
        sequence shows an image seen in training. ``n_sequences`` is shared out by the same
        fractions. The shared pipeline fits normalization on the training sequences.
        """
        import sklearn.datasets

        from .pipeline import build_bundle, split_indices

        bunch = sklearn.datasets.load_digits()
        images, digits = bunch.images, bunch.target
        rest, test_pool = split_indices(len(digits), digits, cfg.test_fraction, cfg.split_seed)
        keep, val = split_indices(len(rest), digits[rest], cfg.val_fraction, cfg.split_seed + 1)
        pools = {"train": rest[keep], "val": rest[val], "test": test_pool}

        n_test = round(cfg.n_sequences * cfg.test_fraction) if len(test_pool) else 0
        n_val = round((cfg.n_sequences - n_test) * cfg.val_fraction) if len(pools["val"]) else 0
        counts = {"train": cfg.n_sequences - n_test - n_val, "val": n_val, "test": n_test}
        rng = np.random.default_rng(cfg.split_seed)
        drawn = {name: digit_sequences(images[pool], digits[pool], counts[name], cfg.sequence_length, rng)[:2]
                 for name, pool in pools.items()}

        origin = "builtin:digit_sequences"
        names = [str(total) for total in range(9 * cfg.sequence_length + 1)]  # every possible sum
        x_test, y_test = drawn["test"] if n_test else (None, None)
        raw = RawData("video", *drawn["train"], x_test=x_test, y_test=y_test, target="class",
                      class_names=names, origin=origin)
        # val comes from its own image pool below, so the pipeline must not carve one out of train
        bundle = build_bundle(raw, cfg.model_copy(update={"val_fraction": 0.0, "test_fraction": 0.0}), task)
        if n_val:
            x_val, y_val = drawn["val"]
            labels = bundle.preprocessor.encode_labels(y_val, f"{origin} (val)")
            bundle.val = Split(torch.from_numpy(np.ascontiguousarray(x_val)), torch.from_numpy(labels))
        return bundle
