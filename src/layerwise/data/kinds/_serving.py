"""The request side of ``layerwise serve`` that each kind describes: one JSON row per sample."""

from __future__ import annotations

from typing import Any

__all__ = ["InputError", "RequestSchema", "type_name", "preview"]


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
