"""``tokens``: text as (T,) int64 token ids in [0, vocab_size), padded to a fixed length.

Sources hand over raw text (``RawData.kind == "text"``: an array of strings); the run's
:class:`~layerwise.data.text.TextPreprocessor` tokenises it. Ids are discrete, so gradients cannot
flow into the inputs: models embed them, and attacks refuse them. The kind owns: fitting the
tokenizer; reading new text (a language model scores a text file or folder cut into blocks as in
training, a text classifier reads a table, a DataFrame or a list of strings); the serving schema
(strings); and the decoded tokens that label attention maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import DataError, RunError
from ..spec import Split
from . import Fitted, InputKind, register_kind
from ._inputs import Inputs, encode_labels
from ._serving import InputError, RequestSchema, type_name

__all__ = ["TokensKind", "TextRequest"]


@register_kind("tokens")
class TokensKind(InputKind):
    description = "(T,) int64 token ids in [0, vocab_size), padded to a fixed length"
    raw_kind = "text"
    dtype = torch.long
    continuous = False
    explained_as = "positions"

    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        """A tokenizer (and the padded length) fitted on the training texts."""
        from ..text import TextPreprocessor

        pre = TextPreprocessor.from_config(cfg).fit(x[train_idx].tolist())
        return Fitted(pre, (pre.max_length,), {"vocab_size": pre.vocab_size})

    def encode(self, preprocessor: Any, x: Any) -> torch.Tensor:
        return preprocessor.encode_padded(list(x))

    def read_inputs(self, source: Any, run: Any, need_labels: bool = False) -> Inputs:
        """A language model scores a text file or folder (or a table's text column) cut into blocks
        as in training; a text classifier reads a table, a DataFrame or a list of strings."""
        import pandas as pd

        from ..tabular import read_table
        from ..text import TABLE_SUFFIXES, read_text, table_texts, text_blocks

        pre, cfg = run.preprocessing.inputs, run.config.data
        path = None if isinstance(source, (pd.DataFrame, list, tuple, np.ndarray)) else Path(source).expanduser()
        if path is not None and not path.exists():
            raise DataError(f"input not found: {path}")
        table = path is not None and path.is_file() and path.suffix.lower() in TABLE_SUFFIXES
        if run.spec.target == "token":
            if path is None:
                raise DataError("a language model reads a text file or folder (or a table with a text column); "
                                "give a path")
            if table:
                frame = read_table(path, cfg.delimiter)
                content = "\n".join(table_texts(frame, cfg, str(path)))
            else:
                content = read_text(path, key="--data")
            split = text_blocks(pre, content, str(path), "give a longer text (block_size is fixed by the run)")
            return Inputs(split, [str(i) for i in range(len(split))], None)
        if path is None:
            frame = source if isinstance(source, pd.DataFrame) else pd.DataFrame({cfg.text_column: list(source)})
            origin = "DataFrame" if isinstance(source, pd.DataFrame) else "list of texts"
        elif table:
            frame, origin = read_table(path, cfg.delimiter), str(path)
        else:
            raise DataError(f"{path}: expected a CSV or Parquet table with a '{cfg.text_column}' column for this "
                            f"text classification run")
        frame = frame.reset_index(drop=True)
        texts = table_texts(frame, cfg, origin)
        labels = frame[cfg.label_column].to_numpy() if cfg.label_column in frame.columns else None
        if need_labels and labels is None:
            raise DataError(f"{origin}: label column '{cfg.label_column}' is missing; evaluation needs labels")
        x = pre.encode_padded(texts)
        return Inputs(Split(x, encode_labels(labels, run, origin, len(x))), [str(i) for i in range(len(x))], labels)

    def request_schema(self, run: Any) -> RequestSchema:
        if run.spec.target == "token":
            raise RunError(f"{run.path} is a language model: use `layerwise generate RUN` instead of serving it")
        return TextRequest(run.preprocessing.inputs)

    def position_labels(self, preprocessor: Any, sample: torch.Tensor) -> tuple[list[str], list[int]]:
        """The decoded tokens (spaces, newlines and tabs made visible); padding is left out."""
        ids = sample.tolist()
        labels = [_axis_token(preprocessor.decode([i])) for i in ids]
        keep = [t for t, i in enumerate(ids) if i != preprocessor.pad_id] or list(range(len(ids)))  # an empty text: all
        return labels, keep


def _axis_token(token: str) -> str:
    """A token as an axis label: spaces, newlines and tabs made visible."""
    return token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


class TextRequest(RequestSchema):
    """Strings; longer texts keep their first ``max_length`` tokens."""

    kind = "text"

    def __init__(self, pre: Any):
        self.max_tokens = int(pre.max_length)

    def describe(self) -> dict[str, Any]:
        return {"kind": "text", "dtype": "string", "max_tokens": self.max_tokens,
                "row_format": "a string; longer texts keep their first max_tokens tokens"}

    def example(self) -> list[Any]:
        return ["some text to classify"]

    def check_row(self, i: int, row: Any) -> None:
        if not isinstance(row, str):
            raise InputError(f"inputs[{i}]: expected a string, got {type_name(row)}")

    def to_source(self, rows: list[Any]) -> list[str]:
        return list(rows)
