"""What every CLI module shares: click's context settings (the tables live in ``core.console``)."""

from __future__ import annotations

from ..core.console import console, metrics_table

__all__ = ["CONTEXT", "console", "metrics_table"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
