"""Terminal output shared by the command line and the tools' printed summaries (rich, imported lazily)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["console", "metrics_table", "rows_table"]


def console():
    from rich.console import Console

    return Console()


def metrics_table(title: str, metrics: Mapping[str, Any]) -> None:
    """A two-column table, metric and value (floats to 4 decimals)."""
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console().print(table)


def rows_table(title: str, rows: Iterable[Mapping[str, Any]], left: Iterable[str] = (),
               headers: Mapping[str, str] | None = None) -> None:
    """A table of dict rows (the keys of the first are the columns; ``left``: left-aligned columns)."""
    from rich.table import Table

    rows, left, headers = list(rows), set(left), headers or {}
    if not rows:
        return
    table = Table(title=title, header_style="bold")
    for key in rows[0]:
        table.add_column(headers.get(key, key), justify="left" if key in left else "right")
    for row in rows:
        table.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    console().print(table)
