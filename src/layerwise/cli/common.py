"""What every CLI module shares: click's context settings (the tables live in ``core.console``)."""

from __future__ import annotations

import click

from ..core.console import console, metrics_table

__all__ = ["CONTEXT", "console", "metrics_table", "trust_option"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

TRUST_HELP = ("let the run directories this command loads run code: a python-family model's file, an int8 "
              "ExportedProgram of an older layerwise (only for runs you trust; docs/security.md)")


def trust_option() -> click.Option:
    """``--trust-run``, on every command that loads a run (a run is read as data without it)."""
    return click.Option(["--trust-run", "trust_run"], is_flag=True, default=False, help=TRUST_HELP)
