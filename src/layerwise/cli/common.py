"""What every CLI module shares: click's context settings and the metrics table."""

from __future__ import annotations

__all__ = ["CONTEXT", "console", "metrics_table"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def console():
    from rich.console import Console

    return Console()


def metrics_table(title: str, metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console().print(table)
