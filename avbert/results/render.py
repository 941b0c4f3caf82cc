"""Writing a table: Markdown, CSV (header row of column keys), JSON, terminal.

Outputs depend only on the table, never on the time or the machine, so
collecting the same runs twice gives byte-identical files. Numbers in CSV and
JSON are rounded to 4 decimals; Markdown and the terminal use each column's
display format. A value that is not there (a cell not done, a metric the
dataset does not have) is empty in CSV, null in JSON and "–" on screen.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

from avbert.results.columns import Column, Table

MISSING = "–"


def plain_value(value):
    """A CSV/JSON value: floats rounded to 4 decimals, NaN as missing."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 4)
    return value


def display_value(value, column: Column) -> str:
    """A Markdown/terminal cell."""
    value = plain_value(value)
    if value is None or value == "":
        return MISSING
    if column.fmt == "delta":
        return f"{value:+.1f}"
    if column.fmt in ("f1", "f2", "f3") and isinstance(value, (int, float)):
        return f"{value:.{column.fmt[1]}f}"
    return str(value)


def to_markdown(table: Table) -> str:
    """Title, a pipe table, then the notes as a list."""
    headers = [column.header for column in table.columns]
    lines = [f"# {table.title}", "", "| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if c.fmt == "text" else "---:" for c in table.columns) + " |"]
    for row in table.rows:
        cells = [display_value(row.get(c.key), c).replace("|", "\\|") for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.key for column in table.columns])
    for row in table.rows:
        writer.writerow(["" if plain_value(row.get(c.key)) is None else plain_value(row.get(c.key))
                         for c in table.columns])
    return buffer.getvalue()


def to_json_data(table: Table) -> dict:
    return {
        "experiment": table.experiment,
        "title": table.title,
        "layout": table.layout,
        "columns": [{"key": c.key, "header": c.header} for c in table.columns],
        "rows": [{c.key: plain_value(row.get(c.key)) for c in table.columns} for row in table.rows],
        "notes": table.notes,
    }


def to_json(table: Table) -> str:
    return json.dumps(to_json_data(table), indent=1, ensure_ascii=False) + "\n"


WRITERS = {"markdown": ("table.md", to_markdown), "csv": ("table.csv", to_csv), "json": ("table.json", to_json)}


def write_table(table: Table, out_dir: Path, formats) -> list[Path]:
    """``table.md`` / ``table.csv`` / ``table.json`` in ``out_dir`` for the requested formats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in formats:
        if name in WRITERS:
            filename, render = WRITERS[name]
            path = out_dir / filename
            path.write_text(render(table), encoding="utf-8")
            written.append(path)
    return written


STATE_STYLES = {"done": "green", "running": "cyan", "preempted": "yellow", "pending": "blue",
                "partial": "yellow", "failed": "red", "missing": "dim"}


def paired_cell(row: dict, column: Column, paper: Column) -> str:
    """``ours / paper (Δ)`` for a value that has the paper's beside it."""
    ours, theirs = display_value(row.get(column.key), column), display_value(row.get(paper.key), paper)
    delta = plain_value(row.get(f"delta_{column.key}"))
    return f"{ours} / {theirs}" + (f" ({delta:+.1f})" if delta is not None else "")


def terminal_columns(table: Table) -> list[tuple[str, object]]:
    """(header, row -> text) pairs: each value beside the paper's, detail after the state."""
    keys = {column.key: column for column in table.columns}
    out = []
    for column in table.columns:
        if column.key.startswith(("paper_", "delta_")) or column.key == "detail":
            continue
        if column.key == "state":
            out.append(("state", lambda row: row.get("state") + (f": {row['detail']}" if row.get("detail") else "")))
        elif f"paper_{column.key}" in keys:
            paper = keys[f"paper_{column.key}"]
            out.append((f"{column.header} ours / paper (Δ)", lambda row, c=column, p=paper: paired_cell(row, c, p)))
        else:
            out.append((column.header, lambda row, c=column: display_value(row.get(c.key), c)))
    return out


def print_table(table: Table, console: Optional[object] = None) -> None:
    """The table on the terminal with rich, values beside the paper's."""
    from rich.console import Console
    from rich.table import Table as RichTable

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
    rich_table = RichTable(title=table.title)
    columns = terminal_columns(table)
    for header, _ in columns:
        rich_table.add_column(header, overflow="fold")
    for row in table.rows:
        rich_table.add_row(*[render(row) for _, render in columns], style=STATE_STYLES.get(row.get("state"), ""))
    console.print(rich_table)
