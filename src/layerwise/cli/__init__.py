"""The command line: a thin layer over the Python API (``layerwise`` runs :func:`main`)."""

from .main import cli, main

__all__ = ["cli", "main"]
