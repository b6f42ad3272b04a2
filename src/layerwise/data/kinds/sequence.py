"""``sequence``: a window of a multivariate series per sample, stored as (T, F) float32 values.

Its sources build their bundle themselves (``layerwise.data.timeseries`` cuts a series into
context windows chronologically), so the shared pipeline has nothing to fit. The values are
continuous: attacks and gradient explanations work on them, one position (time step) at a time.
New inputs are recent history, which ``layerwise forecast`` reads rather than ``Run.predict``.
"""

from __future__ import annotations

from typing import Any

from ...core.errors import DataError, RunError
from . import InputKind, register_kind
from ._inputs import Inputs
from ._serving import RequestSchema

__all__ = ["SequenceKind"]


@register_kind("sequence")
class SequenceKind(InputKind):
    description = "(T, F) float32 values of a series: T time steps of F features"
    explained_as = "positions"

    def read_inputs(self, source: Any, run: Any, need_labels: bool = False) -> Inputs:
        raise DataError(f"{run.path} is a forecasting run: it reads recent history rather than samples; use "
                        f"`layerwise forecast RUN --input FILE.csv` (run.forecast), or evaluate its own splits")

    def request_schema(self, run: Any) -> RequestSchema:
        raise RunError(f"{run.path} is a forecasting run: it reads recent history, not samples; "
                       f"use `layerwise forecast RUN --input FILE.csv` instead of serving it")
