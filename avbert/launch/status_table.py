"""``python tools/status.py [EXPERIMENT] [--runs-dir DIR]``: the status tables.

Reads ``<runs_dir>/<experiment>/index.json`` (written by the launcher) and
asks ``avbert.launch.status`` for each cell's state; prints one rich table per
experiment. Exit code 1 when there is no experiment to show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from avbert.rundir import INDEX
from avbert.rundir.index import read_index
from avbert.launch.status import CellStatus, gather

STATE_STYLES = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow", "SUBMITTED": "yellow",
                "FAILED": "red", "UNKNOWN": "magenta", "NEW": "dim"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avbert-status", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", help="experiment name or file (default: all under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="where the runs are (default: runs)")
    return parser


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"


def _state(status: CellStatus) -> Text:
    """The state in its colour and the detail as plain text: a detail quotes errors and paths,
    whose brackets (``[/pytorch/...]``) must not be read as console markup."""
    detail = f" ({status.detail})" if status.detail else ""
    return Text.assemble((status.state, STATE_STYLES.get(status.state, "white")), detail)


def status_table(name: str, index: dict, statuses: dict[str, CellStatus]) -> Table:
    table = Table(title=f"{name} ({index.get('scale', '?')} scale)", title_justify="left")
    for column, justify in (("cell", "left"), ("job", "left"), ("state", "left"), ("step", "right"),
                            ("loss", "right"), ("ETA", "right"), ("requeues", "right"), ("checkpoint", "right"),
                            ("log", "left")):
        table.add_column(column, justify=justify)
    for cell, status in statuses.items():
        entry = index["cells"].get(cell, {})
        step = f"{status.step}/{status.total}" if status.step is not None else "-"
        loss = f"{status.loss:.4g}" if isinstance(status.loss, (int, float)) else "-"
        table.add_row(Text(f"{entry.get('variant', '?')}/{entry.get('stage', '?')}"), Text(status.job_id or "-"),
                      _state(status), step, loss, duration(status.eta_s), str(status.requeues),
                      duration(status.checkpoint_age_s), Text(status.log or "-"))
    return table


def experiments(runs_dir: Path, wanted: Optional[str]) -> list[str]:
    if wanted:
        return [Path(wanted).stem if wanted.endswith((".yaml", ".yml")) else wanted]
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / INDEX).is_file())


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    runs_dir = Path(args.runs_dir)
    names = [name for name in experiments(runs_dir, args.experiment) if (runs_dir / name / INDEX).is_file()]
    if not names:
        what = f"experiment {args.experiment!r}" if args.experiment else "experiments"
        print(f"status: no {what} launched under {runs_dir} (no {INDEX})", file=sys.stderr)
        return 1
    for name in names:
        index = read_index(runs_dir / name)
        console.print(status_table(name, index, gather(index, details=True)))
    return 0
