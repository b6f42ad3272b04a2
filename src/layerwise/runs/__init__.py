"""Runs: training an experiment into a run directory (``train``), reading one back (``Run``,
``load_run``), loading configs, and the run's HTML report. Above ``train``; the tools build on it."""

from .run import Run, load_run
from .training import train

__all__ = ["Run", "load_run", "train"]
