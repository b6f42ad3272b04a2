"""What ``POST /predict`` accepts for a run: checked row by row, then converted as ``Run.predict`` converts.

The schema is derived from the run's saved preprocessing (``data.json``), so it needs no data:

- tabular runs: rows as objects keyed by column name, or lists in column order (the order of
  ``GET /metadata``); every column must be present, ``null`` is a missing value (imputed as in
  training); numeric columns take numbers, categorical columns strings or numbers;
- image runs: nested pixel arrays (H, W) or (H, W, C), values 0-255, the size the model was trained on;
- text classification runs: strings.

Checks name the offending row and field (``inputs[3]: expected 8x8 pixels, got 7x8``). Conversion
then goes through :func:`layerwise.data.inputs.read_inputs` (a DataFrame, a uint8 array, a list of texts),
the same path as ``Run.predict``, into the run's stored input form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.errors import RunError

__all__ = ["InputError", "InputSchema"]


class InputError(ValueError):
    """A request's inputs do not fit the run; the message names the row and field."""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class InputSchema:
    """The input contract of one run; raises RunError for runs the server cannot take."""

    def __init__(self, run):
        self.run = run
        pre = run.preprocessing.inputs
        kind = getattr(pre, "kind", None)
        if kind == "timeseries":
            raise RunError(f"{run.path} is a forecasting run: it reads recent history, not samples; "
                           f"use `layerwise forecast RUN --input FILE.csv` instead of serving it")
        if run.spec.target == "token":
            raise RunError(f"{run.path} is a language model: use `layerwise generate RUN` instead of serving it")
        if kind == "image" and run.spec.kind != "image":
            raise RunError(f"{run.path}: {run.spec.kind} runs cannot be served (Run.predict reads no "
                           f"{run.spec.kind} inputs yet); serve an image, tabular or text classification run")
        if kind not in ("tabular", "image", "text"):
            raise RunError(f"{run.path}: inputs of kind {kind!r} cannot be served")
        self.kind = kind
        if kind == "tabular":
            self.numeric = list(pre.numeric)
            self.categorical = list(pre.categorical)
            self.columns = self.numeric + self.categorical
        elif kind == "image":
            self.channels = int(pre.channels)
            self.height, self.width = (int(s) for s in pre.size)

    # -- description --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The input part of ``GET /metadata``."""
        pre = self.run.preprocessing.inputs
        if self.kind == "tabular":
            columns = [{"name": c, "dtype": "number", "missing": "null, imputed with the training fill value"}
                       for c in self.numeric]
            columns += [{"name": c, "dtype": "string", "levels": list(pre.levels_.get(c, [])),
                         "unknown": "unseen values and null share one extra level"} for c in self.categorical]
            return {"kind": "tabular", "columns": columns,
                    "row_format": "an object keyed by column name, or a list of values in this column order"}
        if self.kind == "image":
            shape = [self.height, self.width] if self.channels == 1 else [self.height, self.width, self.channels]
            return {"kind": "image", "shape": shape, "channels": self.channels, "dtype": "integer 0-255",
                    "row_format": f"nested lists (height, width{'' if self.channels == 1 else ', channels'}) of pixels",
                    "upload": "POST /predict/image with image files (any size; resized as Run.predict does)"}
        return {"kind": "text", "dtype": "string", "max_tokens": int(pre.max_length),
                "row_format": "a string; longer texts keep their first max_tokens tokens"}

    def example(self) -> list[Any]:
        """One valid row, for the OpenAPI docs."""
        if self.kind == "tabular":
            pre = self.run.preprocessing.inputs
            row: dict[str, Any] = {c: round(float(pre.mean_.get(c, 0.0)), 3) for c in self.numeric}
            row.update({c: (pre.levels_.get(c) or [None])[0] for c in self.categorical})
            return [row]
        if self.kind == "image":
            pixel = 0 if self.channels == 1 else [0] * self.channels
            return [[[pixel] * self.width] * self.height]
        return ["some text to classify"]

    # -- checks -------------------------------------------------------------------------------
    def check(self, rows: list[Any], max_rows: int) -> None:
        """Raise InputError naming the first bad row and field; a good request passes untouched."""
        if not rows:
            raise InputError("inputs: empty; send at least one row")
        if len(rows) > max_rows:
            raise InputError(f"inputs: {len(rows)} rows, more than this server's limit of {max_rows} per request "
                             f"(max_rows); split the request")
        check = {"tabular": self._check_row, "image": self._check_image, "text": self._check_text}[self.kind]
        for i, row in enumerate(rows):
            check(i, row)

    def _check_row(self, i: int, row: Any) -> None:
        if isinstance(row, dict):
            unknown = [k for k in row if k not in self.columns]
            if unknown:
                raise InputError(f"inputs[{i}]: unknown column {unknown[0]!r}; the run's columns are "
                                 f"{', '.join(self.columns)}")
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise InputError(f"inputs[{i}]: column {missing[0]!r} is missing (send null for a missing value)")
            items = row.items()
        elif isinstance(row, list):
            if len(row) != len(self.columns):
                raise InputError(f"inputs[{i}]: expected {len(self.columns)} values ({', '.join(self.columns)}), "
                                 f"got {len(row)}")
            items = zip(self.columns, row)
        else:
            raise InputError(f"inputs[{i}]: expected an object keyed by column name or a list of "
                             f"{len(self.columns)} values, got {_type_name(row)}")
        for name, value in items:
            if value is None:
                continue
            if name in self.numeric:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"inputs[{i}].{name}: expected a number or null, got {_type_name(value)} "
                                     f"{_preview(value)}")
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InputError(f"inputs[{i}].{name}: expected a string, a number or null, got {_type_name(value)}")

    def _check_image(self, i: int, row: Any) -> None:
        expected = f"{self.height}x{self.width}" + ("" if self.channels == 1 else f"x{self.channels}")
        try:
            arr = np.asarray(row)
        except ValueError:  # ragged nesting
            raise InputError(f"inputs[{i}]: expected {expected} pixels, got rows of different lengths") from None
        if arr.dtype.kind not in "iuf":
            raise InputError(f"inputs[{i}]: expected {expected} pixels as nested lists of numbers 0-255, got "
                             f"{'a string' if isinstance(row, str) else 'non-numeric values'}")
        shape = arr.shape
        ok = shape[:2] == (self.height, self.width) and (
            (arr.ndim == 2 and self.channels == 1) or (arr.ndim == 3 and shape[2] == self.channels))
        if not ok:
            got = "x".join(map(str, shape)) if shape else "a single number"
            raise InputError(f"inputs[{i}]: expected {expected} pixels, got {got}")
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255):
            bad = arr[~np.isfinite(arr) | (arr < 0) | (arr > 255)].flat[0]
            raise InputError(f"inputs[{i}]: pixel values must lie in 0..255, got {bad:g}")

    def _check_text(self, i: int, row: Any) -> None:
        if not isinstance(row, str):
            raise InputError(f"inputs[{i}]: expected a string, got {_type_name(row)}")

    # -- conversion ---------------------------------------------------------------------------
    def to_tensor(self, rows: list[Any]) -> torch.Tensor:
        """Checked rows -> the run's stored input form, through ``read_inputs`` as in ``Run.predict``."""
        from ...data.inputs import read_inputs

        if self.kind == "tabular":
            return read_inputs(self.frame(rows), self.run).split.x
        if self.kind == "image":
            pixels = np.rint(np.asarray(rows, dtype=np.float32)).astype(np.uint8)  # (N, H, W[, C])
            return self.pixels_to_tensor(pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2))
        return read_inputs(list(rows), self.run).split.x

    def pixels_to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (N, C, H, W) -> stored form (checked against the run's channels and size by read_inputs)."""
        from ...data.inputs import read_inputs

        return read_inputs(pixels, self.run).split.x

    def frame(self, rows: list[Any]):
        """Tabular rows (objects or lists) as a DataFrame with the run's columns; null -> missing."""
        import pandas as pd

        records = [row if isinstance(row, dict) else dict(zip(self.columns, row)) for row in rows]
        data: dict[str, Any] = {}
        for c in self.numeric:
            data[c] = np.array([np.nan if r[c] is None else float(r[c]) for r in records], dtype=np.float64)
        for c in self.categorical:
            data[c] = pd.Series([r[c] for r in records], dtype=object)
        return pd.DataFrame(data, columns=self.columns)
