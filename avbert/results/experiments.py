"""An experiment as the tables see it: its cells, grouped into rows.

The tables report what ran, as the launcher recorded it in
``<runs_dir>/<experiment>/index.json`` (``avbert.rundir.index``): the scale, the
report section (layout, title, the paper's numbers), the seeds and every cell with
the resolved config it was launched with; cell ``<variant>/<stage>`` runs in
``<runs_dir>/<experiment>/<variant>/<stage>/``. The experiment file itself is not
read again: when it changed after the launch, the report says so
(``ExperimentReport.file_change``) and still shows what ran.

A table row is one evaluated cell (a ``finetune`` or ``linear`` stage)
together with the stages it starts from (its ``after`` chain, e.g. the
pretraining): the row's state and cost cover that whole chain. A training
cell that no evaluated cell starts from is a row of its own. Cells found on
disk or in the index that the experiment file does not (or no longer)
produce are added as rows of their own, so nothing that ran is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from avbert.config import ConfigError
from avbert.config.loader import read_yaml
from avbert.rundir import EVALUATED_KINDS, read_yaml_mapping
from avbert.rundir.index import ROW_PER_STAGE_LAYOUTS, ExperimentIndex, IndexCell, read_experiment_index

DOWNSTREAM_KINDS = EVALUATED_KINDS


@dataclass
class CellSpec:
    """One (variant, stage) cell: ``stage`` names its run directory (a stage
    expanded over axes gets a suffix, ``ucf101-1``), ``base_stage`` the
    experiment's stage it comes from."""

    variant: str
    stage: str
    base_stage: str
    kind: str
    after: Optional[str] = None
    config: Optional[dict] = None
    seed: Optional[int] = None  # the experiment's seed (``seeds``) this cell runs
    base_variant: Optional[str] = None  # the variant without its seed suffix

    @property
    def row_variant(self) -> str:
        return self.base_variant or self.variant


@dataclass
class RowSpec:
    """The cells one table row reports, upstream first."""

    variant: str
    chain: list[CellSpec]

    @property
    def evaluated(self) -> Optional[CellSpec]:
        last = self.chain[-1]
        return last if last.kind in DOWNSTREAM_KINDS else None


@dataclass
class ExperimentReport:
    """An experiment's cells at the scale it ran, and how to report them."""

    name: str
    layout: str
    title: str
    scale: Optional[str]
    cells: list[CellSpec]
    reference: dict[str, dict] = field(default_factory=dict)
    jobs: dict[tuple[str, str], dict] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # the experiment's ``seeds``: each row run once per seed
    file_change: Optional[str] = None  # how the experiment file differs from what was launched

    def job_state(self, variant: str, stage: str) -> Optional[str]:
        state = (self.jobs.get((variant, stage)) or {}).get("state")
        return str(state) if state is not None else None

    def job_state_unix(self, variant: str, stage: str) -> Optional[float]:
        """When the launcher recorded ``job_state`` (None when it did not say)."""
        taken = (self.jobs.get((variant, stage)) or {}).get("state_unix")
        return float(taken) if isinstance(taken, (int, float)) and not isinstance(taken, bool) else None

    def reference_for(self, row: RowSpec) -> dict:
        """The paper's numbers of a row: by variant, or in the layouts of a row per evaluated
        stage (``avbert.launch.spec.reference_keys``) by the most specific key that names it:
        ``variant/stage``, ``stage``, ``variant/base stage``, ``base stage``."""
        cell = row.evaluated
        variant = row.chain[-1].row_variant
        if self.layout not in ROW_PER_STAGE_LAYOUTS:
            return self.reference.get(variant) or {}
        if cell is None:
            return {}
        for key in (f"{variant}/{cell.stage}", cell.stage, f"{variant}/{cell.base_stage}", cell.base_stage):
            if key in self.reference:
                return self.reference[key] or {}
        return {}

    def rows(self) -> list[RowSpec]:
        """Rows in the order of the cells: evaluated cells with their chains, then lone cells."""
        by_key = {(c.variant, c.stage): c for c in self.cells}
        used: set = set()
        rows = []
        for cell in self.cells:
            if cell.kind in DOWNSTREAM_KINDS:
                chain = [cell]
                while chain[0].after and (cell.variant, chain[0].after) in by_key:
                    chain.insert(0, by_key[(cell.variant, chain[0].after)])
                used.update((c.variant, c.stage) for c in chain)
                rows.append(RowSpec(cell.variant, chain))
        for cell in self.cells:
            if (cell.variant, cell.stage) not in used:
                position = next((i for i, r in enumerate(rows) if r.variant == cell.variant), len(rows))
                rows.insert(position, RowSpec(cell.variant, [cell]))
        return rows


RUN_FILES = ("config.yaml", "status.json", "metrics.jsonl")


def experiment_name(experiment: str) -> str:
    """The experiment a name or a YAML path means: the file's ``name`` (else its stem)."""
    path = Path(experiment)
    if path.suffix not in (".yaml", ".yml"):
        return experiment
    try:
        name = read_yaml(path).get("name")
    except ConfigError:
        name = None
    return str(name) if isinstance(name, str) and name else path.stem


def cells_on_disk(runs_dir: Path, name: str) -> list[tuple[str, str]]:
    """(variant, stage) of every run directory under the experiment's folder
    (a folder with a config, status or metrics file; the launcher's code
    snapshots are not runs)."""
    root = runs_dir / name
    if not root.is_dir():
        return []
    found = []
    for variant in sorted(p for p in root.iterdir() if p.is_dir()):
        found += [(variant.name, stage.name) for stage in sorted(variant.iterdir())
                  if stage.is_dir() and any((stage / f).is_file() for f in RUN_FILES)]
    return found


def _cell(cell: IndexCell) -> CellSpec:
    return CellSpec(cell.variant, cell.stage, cell.base_stage, cell.kind, cell.after, cell.config, cell.seed,
                    cell.base_variant)


def _extra_cell(runs_dir: Path, name: str, variant: str, stage: str) -> CellSpec:
    config = read_yaml_mapping(runs_dir / name / variant / stage / "config.yaml")
    kind = str((config or {}).get("stage") or ("pretrain" if stage == "pretrain" else stage))
    return CellSpec(variant, stage, stage, kind, None, config)


def report_from_index(index: ExperimentIndex, runs_dir: Path) -> ExperimentReport:
    """The report of an indexed experiment: its cells as launched, then run directories
    on disk that the index does not name (nothing that ran is dropped)."""
    cells = [_cell(c) for c in index.cells]
    known = {(c.variant, c.stage) for c in cells}
    cells += [_extra_cell(runs_dir, index.experiment, variant, stage)
              for variant, stage in cells_on_disk(runs_dir, index.experiment) if (variant, stage) not in known]
    jobs = {(c.variant, c.stage): {"state": c.state, "state_unix": c.state_unix, "job_id": c.job_id}
            for c in index.cells}
    report = index.report
    reference = report.get("reference") if isinstance(report.get("reference"), dict) else {}
    return ExperimentReport(index.experiment, str(report.get("layout") or "sharing"),
                            str(report.get("title") or index.experiment), index.scale, cells,
                            {str(k): dict(v) for k, v in reference.items() if isinstance(v, dict)}, jobs,
                            list(index.seeds), index.file_change())


def load_report(experiment: str, runs_dir: str | Path) -> ExperimentReport:
    """The experiment ``experiment`` (a name, or the YAML file it was launched from) as it
    ran under ``runs_dir``; FileNotFoundError when it was never launched there."""
    runs_dir = Path(runs_dir)
    name = experiment_name(experiment)
    index = read_experiment_index(runs_dir / name)
    if index is None:
        raise FileNotFoundError(f"{runs_dir / name / 'index.json'}: no experiment index (was {name!r} launched "
                                f"into {runs_dir}? tools/launch.py writes it; a --dry-run does not)")
    return report_from_index(index, runs_dir)
