"""The request side of ``layerwise serve`` that each kind describes: one JSON row per sample."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FLOAT32_MAX", "InputError", "RequestSchema", "finite_number", "preview", "type_name"]

FLOAT32_MAX = 3.4028234663852886e38  # inputs are stored as float32: a larger magnitude becomes infinity


class InputError(ValueError):
    """A request's inputs do not fit the run; the message names the row and field."""


def type_name(value: Any) -> str:
    """A JSON value's type in words, for messages: "an object", "a list", "null"..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def preview(value: Any) -> str:
    """A value shortened to 40 characters, for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def finite_number(field: str, value: int | float) -> float:
    """A JSON number as a float that float32 can hold; InputError naming ``field`` otherwise.

    Python's JSON reader accepts ``NaN``, ``Infinity`` and ``1e999`` (infinity) and integers of any
    length: none of them is a value a model can compute with, and imputing them as missing would
    answer for an input nobody sent.
    """
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        digits = int((value.bit_length() - 1) * math.log10(2)) + 1  # str() refuses integers over 4300 digits
        raise InputError(f"{field}: an integer of about {digits} digits is too large; numbers must lie "
                         f"within ±3.4e38 (float32)") from None
    if math.isnan(number) or math.isinf(number):  # named as JSON spells them
        spelled = "NaN" if math.isnan(number) else ("-" if number < 0 else "") + "Infinity"
        raise InputError(f"{field}: expected a finite number, got {spelled} (send null for a missing value)")
    if abs(number) > FLOAT32_MAX:
        raise InputError(f"{field}: {number:g} is too large; numbers must lie within ±3.4e38 (float32)")
    return number


class RequestSchema:
    """What ``POST /predict`` accepts for one run: the rows' form, checked row by row.

    A kind returns one from :meth:`InputKind.request_schema`; ``tools.serve`` wraps it with the
    request-wide checks (empty, too many rows) and the conversion through ``read_inputs``.
    """

    kind: str = ""  # what GET /metadata calls the inputs: "tabular", "image", "text"
    # POST /predict/image takes image files (then the schema has channels, height and width)
    takes_image_files: bool = False

    def describe(self) -> dict[str, Any]:
        """The input part of ``GET /metadata``."""
        raise NotImplementedError

    def example(self) -> list[Any]:
        """One valid row, for the OpenAPI docs."""
        raise NotImplementedError

    def check_row(self, i: int, row: Any) -> None:
        """Raise InputError naming row ``i`` and its bad field; a good row passes untouched."""
        raise NotImplementedError

    def to_source(self, rows: list[Any]) -> Any:
        """Checked rows as what ``read_inputs`` takes (a DataFrame, a uint8 array, a list of texts)."""
        raise NotImplementedError
