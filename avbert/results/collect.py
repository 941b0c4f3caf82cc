"""From run directories to the paper's tables: ``collect``.

``collect(experiments, runs_dir, out_dir, formats)`` reads every cell of each
experiment (``<runs_dir>/<experiment>/<variant>/<stage>/``: config.yaml,
metrics.jsonl, status.json, eval.json, checkpoint markers) as the launcher's
index.json recorded them, builds the table of the experiment's report layout, writes it
under ``<out_dir>/<experiment>/`` as ``table.md``, ``table.csv`` and
``table.json`` plus the figures (``png``), and returns the tables by
experiment name. ``tools/collect.py`` is its command line; the launcher calls
it after a local run to print the table.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

from avbert.results.columns import Table
from avbert.results.experiments import ExperimentReport, load_report
from avbert.results.plots import draw_plots
from avbert.results.render import print_table, write_table
from avbert.results.runs import StageRun, read_stage
from avbert.results.tables import build_table

FORMATS = ("markdown", "csv", "json", "png")


def read_runs(spec: ExperimentReport, runs_dir: Path) -> dict[tuple[str, str], StageRun]:
    """(variant, stage) -> what that cell's run directory holds (empty when absent)."""
    root = runs_dir / spec.name
    return {(c.variant, c.stage): read_stage(root / c.variant / c.stage, c.stage) for c in spec.cells}


@lru_cache(maxsize=64)
def _transformer_params(model_json: str) -> Optional[float]:
    import torch

    from avbert.config import ConfigError, config_from_dict
    from avbert.models import AVBert, count_parameters

    try:
        model_cfg = config_from_dict({"model": json.loads(model_json)}).model
    except ConfigError:
        return None
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = AVBert(model_cfg)
    return count_parameters(model)["transformers"] / 1e6


def transformer_params_m(model_config: dict) -> Optional[float]:
    """Millions of Transformer parameters (embeddings included, as in the paper's table)."""
    return _transformer_params(json.dumps(model_config, sort_keys=True))


def pretrained_labeller(runs_dir: Path):
    """How a downstream row names its weights: relative to ``runs_dir`` when the
    export lies under it, ``scratch`` without weights, else the path as given."""
    root = runs_dir.resolve()

    def label(path: Optional[str]) -> str:
        if not path:
            return "scratch"
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            return str(path)
    return label


def discover_experiments(runs_dir: Path) -> list[str]:
    """Experiments launched into ``runs_dir`` (a folder with the launcher's ``index.json``), by name."""
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / "index.json").is_file())


def collect_one(experiment: str, runs_dir: Path) -> tuple[Table, ExperimentReport, dict]:
    """The table of one experiment, its spec and its cells."""
    spec = load_report(experiment, runs_dir)
    runs = read_runs(spec, runs_dir)
    table = build_table(spec, runs, transformer_params_m, pretrained_labeller(runs_dir))
    return table, spec, runs


def collect(experiments: Optional[Sequence[str]] = None, runs_dir: str | Path = "runs",
            out_dir: Optional[str | Path] = "reports", formats: Iterable[str] = FORMATS,
            print_tables: bool = False) -> dict[str, Table]:
    """Build, write and return the tables of ``experiments`` (names or YAML paths;
    every experiment with a folder under ``runs_dir`` when None).

    ``formats``: any of ``markdown``, ``csv``, ``json`` (files) and ``png``
    (figures); nothing is written when ``out_dir`` is None. Each experiment is read
    from what its launches recorded (``index.json``) and its run directories, not from
    its experiment file, which may have changed since.
    """
    runs_dir = Path(runs_dir)
    formats = tuple(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; allowed: {', '.join(FORMATS)}")
    names = list(experiments) if experiments else discover_experiments(runs_dir)
    tables = {}
    for experiment in names:
        table, spec, runs = collect_one(experiment, runs_dir)
        tables[table.experiment] = table
        if out_dir is not None:
            target = Path(out_dir) / table.experiment
            write_table(table, target, formats)
            if "png" in formats:
                draw_plots(table, runs, target)
        if print_tables:
            print_table(table)
    return tables
