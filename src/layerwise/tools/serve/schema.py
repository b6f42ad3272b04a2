"""What ``POST /predict`` accepts for a run: checked row by row, then converted as ``Run.predict`` converts.

Each input kind describes its rows (``InputKind.request_schema``, in ``layerwise.data.kinds``);
the schema is derived from the run's saved preprocessing (``data.json``), so it needs no data:

- tabular runs: rows as objects keyed by column name, or lists in column order (the order of
  ``GET /metadata``); every column must be present, ``null`` is a missing value (imputed as in
  training); numeric columns take finite numbers float32 can hold (``NaN``, ``Infinity``, ``1e308``
  are refused), categorical columns strings or numbers;
- image runs: nested pixel arrays (H, W) or (H, W, C), values 0-255, the size the model was trained on;
- text classification runs: strings.

Checks name the offending row and field (``inputs[3]: expected 8x8 pixels, got 7x8``). Conversion
then goes through :func:`layerwise.data.inputs.read_inputs` (a DataFrame, a uint8 array, a list of texts),
the same path as ``Run.predict``, into the run's stored input form.
"""

from __future__ import annotations

from typing import Any

import torch

from ...data.kinds import InputError, RequestSchema, input_kind

__all__ = ["InputError", "InputSchema"]


class InputSchema:
    """The input contract of one run: its kind's request schema (``InputKind.request_schema``),
    plus the checks of a whole request; raises RunError for runs the server cannot take."""

    def __init__(self, run):
        self.run = run
        self.request: RequestSchema = input_kind(run.spec).request_schema(run)
        self.kind = self.request.kind  # what /metadata calls the inputs: "tabular", "image", "text"

    def __getattr__(self, name: str) -> Any:
        """The request schema's own attributes: an image request's ``channels``, ``height``, ``width``."""
        if name == "request":  # not set yet (__init__ failed): no recursion
            raise AttributeError(name)
        return getattr(self.request, name)

    # -- description --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The input part of ``GET /metadata``."""
        return self.request.describe()

    def example(self) -> list[Any]:
        """One valid row, for the OpenAPI docs."""
        return self.request.example()

    # -- checks -------------------------------------------------------------------------------
    def check(self, rows: list[Any], max_rows: int) -> None:
        """Raise InputError naming the first bad row and field; a good request passes untouched."""
        if not rows:
            raise InputError("inputs: empty; send at least one row")
        if len(rows) > max_rows:
            raise InputError(f"inputs: {len(rows)} rows, more than this server's limit of {max_rows} per request "
                             f"(max_rows); split the request")
        for i, row in enumerate(rows):
            self.request.check_row(i, row)

    # -- conversion ---------------------------------------------------------------------------
    def to_tensor(self, rows: list[Any]) -> torch.Tensor:
        """Checked rows -> the run's stored input form, through ``read_inputs`` as in ``Run.predict``.

        A stored value that is not finite (a number that overflows float32 once preprocessed) is an
        InputError naming the row and feature: it would reach the model as inf and come back as NaN."""
        from ...data.inputs import read_inputs

        x = read_inputs(self.request.to_source(rows), self.run).split.x
        if x.is_floating_point() and not torch.isfinite(x).all():
            i, j = (int(k) for k in (~torch.isfinite(x.reshape(len(x), -1))).nonzero()[0])
            names = self.run.spec.feature_names or []
            feature = f"feature {names[j]!r}" if j < len(names) else f"input value {j}"
            raise InputError(f"inputs[{i}]: {feature} is not finite once preprocessed (it overflows float32); "
                             f"send values of a reasonable magnitude")
        return x

    def pixels_to_tensor(self, pixels) -> torch.Tensor:
        """uint8 (N, C, H, W) -> stored form (checked against the run's channels and size by read_inputs)."""
        from ...data.inputs import read_inputs

        return read_inputs(pixels, self.run).split.x
