"""What a model is told about its data, and what a source hands to the pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["DataSpec", "RawData", "Split", "DataBundle", "INPUT_DTYPES"]

# The dtype of each input kind's model inputs, filled in as each kind registers
# (layerwise.data.kinds): this module sits below the kinds, so it is told rather than importing them.
INPUT_DTYPES: dict[str, torch.dtype] = {}


@dataclass
class DataSpec:
    """The contract between data and models: input kind and shape, targets, names.

    Input kinds: ``tabular`` (F,) floats, ``image`` (C, H, W) uint8, ``video`` (T, C, H, W) uint8
    frames, ``sequence`` (T, F) floats, ``tokens`` (T,) integer ids; each is a module of
    ``layerwise.data.kinds`` (``input_kind(spec)``). Models declare the kinds they accept.
    Targets: ``class`` (one label per sample), ``numeric`` (``num_targets`` values per sample),
    ``token`` (a language model: the next token at every position, ``vocab_size`` classes) or
    ``caption`` (image-text pairs, ``data/pairs.py``: a class index or -1, then the caption's ids).
    """

    kind: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    target: Literal["class", "numeric", "token", "caption"]
    num_classes: int | None = None
    class_names: list[str] | None = None
    num_targets: int | None = None
    target_names: list[str] | None = None
    feature_names: list[str] | None = None
    # tabular inputs encoded as embedding indices: (column position, cardinality) per column
    categorical: list[tuple[int, int]] = field(default_factory=list)
    # tabular inputs, how the (F,) vector is laid out (empty for other kinds, and in runs saved before
    # they were recorded): ``onehot`` the (start, width) of each one-hot encoded column; ``numeric`` the
    # positions of the scalar features (scaled numeric columns, date parts, missing indicators,
    # frequency codes: every position that is neither one-hot nor an embedding index); ``bins`` for
    # each entry of ``numeric``, the increasing bin edges of its training values (quantiles, in the
    # scaled units the model sees) that piecewise-linear numeric embeddings use
    onehot: list[tuple[int, int]] = field(default_factory=list)
    numeric: list[int] = field(default_factory=list)
    bins: list[list[float]] = field(default_factory=list)
    vocab_size: int | None = None  # "tokens" inputs: ids lie in [0, vocab_size)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A batch of zeros of the right shape and dtype, for dry runs and summaries."""
        return torch.zeros(batch, *self.input_shape, dtype=INPUT_DTYPES.get(self.kind, torch.float32))

    @property
    def num_outputs(self) -> int:
        """Width of the head: classes, numeric targets, or the vocabulary (next-token logits)."""
        # image-text pairs: the image family's head is unused (the task projects its features), sized as classes
        sizes = {"class": self.num_classes, "numeric": self.num_targets, "token": self.vocab_size,
                 "caption": self.num_classes or 1}
        return int(sizes[self.target])  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["categorical"] = [list(c) for c in self.categorical]
        data["onehot"] = [list(c) for c in self.onehot]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataSpec":
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["categorical"] = [tuple(c) for c in data.get("categorical", [])]
        data["onehot"] = [tuple(c) for c in data.get("onehot", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class RawData:
    """What a source reads, before splitting and preprocessing.

    ``x`` is a pandas DataFrame for tabular data or a uint8 array (N, C, H, W) for images; ``y`` a
    1-D array of labels or values (or 2-D for several numeric targets).
    """

    kind: str
    x: Any
    y: np.ndarray
    x_test: Any = None
    y_test: np.ndarray | None = None
    target: Literal["class", "numeric"] | None = None  # None: inferred from y
    class_names: list[str] | None = None  # for integer labels with known names
    target_names: list[str] | None = None
    origin: str = ""  # for messages: the file or data set it came from


@dataclass
class Split:
    """One split, stored compactly (images stay uint8 until a batch is drawn)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class DataBundle:
    """Train/val/test splits, the spec, and the fitted preprocessing that produced them."""

    spec: DataSpec
    train: Split
    val: Split | None
    test: Split | None
    preprocessor: Any  # layerwise.data.preprocess.Preprocessor

    def split(self, name: str) -> Split:
        part = getattr(self, name)
        if part is None or len(part) == 0:
            from ..core.errors import DataError

            raise DataError(f"the data has no '{name}' split; set data.val_fraction/test_fraction above 0")
        return part
