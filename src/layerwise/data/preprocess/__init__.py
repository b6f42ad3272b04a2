"""Preprocessing fitted on the training split only, and saved with the run as plain JSON.

A tabular preprocessor (:mod:`.tabular`) imputes, scales and encodes columns into a float matrix;
an image preprocessor (:mod:`.image`) turns stored uint8 batches into normalized floats (on the
device, per batch) and augments training batches; a target transform (:mod:`.target`) standardises
regression targets (after a log when asked) and maps predictions back. Each records everything
needed to process new inputs at prediction time, so a run directory alone can predict.

This module holds what they share: the registry a run rebuilds its input preprocessor from, and
:class:`Preprocessing`, everything a run saves about its data besides the spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import DataError

__all__ = ["Preprocessing", "TabularPreprocessor", "ImagePreprocessor", "TargetScaler", "TargetTransform",
           "preprocessor_from_dict", "numeric_or_junk", "numeric_target", "register_preprocessor"]

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


# the families register themselves with the decorator above, so they are imported after it
from .image import ImagePreprocessor  # noqa: E402
from .tabular import TabularPreprocessor, numeric_or_junk, numeric_target  # noqa: E402
from .target import TargetScaler, TargetTransform  # noqa: E402


def preprocessor_from_dict(data: dict[str, Any]):
    from ... import data as _sources  # noqa: F401  (importing the sources registers their preprocessors)

    return PREPROCESSORS[data["kind"]].from_dict(data)


class Preprocessing:
    """Everything fitted on the training split: input preprocessing, class names, target transform."""

    def __init__(self, inputs: Any, target: str, classes: list | None = None, scaler: TargetTransform | None = None,
                 captions: Any = None):
        self.inputs = inputs  # TabularPreprocessor | ImagePreprocessor | ...
        self.target = target  # "class" | "numeric" | "token" | "caption"
        self.classes = classes  # original label values, index = class id
        self.scaler = scaler  # regression targets: the model learns scaler.transform(y)
        self.captions = captions  # image-text pairs: the captions' tokenizer (a TextPreprocessor)

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if self.target == "numeric":
            if self.scaler is None:
                return y.astype(np.float32)
            return self.scaler.transform(np.asarray(y, dtype=np.float64), origin)
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
                "scaler": None if self.scaler is None else self.scaler.to_dict(),
                **({"captions": self.captions.to_dict()} if self.captions is not None else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        scaler = TargetTransform.from_dict(data["scaler"]) if data.get("scaler") else None
        captions = preprocessor_from_dict(data["captions"]) if data.get("captions") else None
        return cls(preprocessor_from_dict(data["inputs"]), data["target"], data.get("classes"), scaler, captions)


def _key(value: Any) -> str:
    """Labels compare as text so that 1, 1.0, '1' and np.int64(1) are one class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
