"""An experiment as the tables see it: its cells, grouped into rows.

The experiment file (``experiments/<name>.yaml``, read by
``avbert.launch.spec``) is expanded by the launcher's registry into cells, one
per (variant, stage) with its resolved config; cell ``<variant>/<stage>`` runs
in ``<runs_dir>/<experiment>/<variant>/<stage>/``. The launcher's
``<runs_dir>/<experiment>/index.json`` adds the scale it ran at and each
cell's job id and scheduler state.

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

from avbert.launch.spec import ROW_PER_STAGE_LAYOUTS
from avbert.rundir import read_json, read_yaml_mapping

DOWNSTREAM_KINDS = ("finetune", "linear")


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

    def job_state(self, variant: str, stage: str) -> Optional[str]:
        state = (self.jobs.get((variant, stage)) or {}).get("state")
        return str(state) if state is not None else None

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


def find_experiment_file(experiment: str, search: tuple[Path, ...]) -> Optional[Path]:
    """``experiment`` as a path to a YAML file, or as a name under one of ``search``."""
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml"):
        return path if path.is_file() else None
    for folder in search:
        for suffix in (".yaml", ".yml"):
            if (folder / f"{experiment}{suffix}").is_file():
                return folder / f"{experiment}{suffix}"
    return None


def read_index(runs_dir: Path, name: str) -> tuple[Optional[str], dict[tuple[str, str], dict]]:
    """(scale, cells by (variant, stage)) from the launcher's ``index.json``."""
    index = read_json(runs_dir / name / "index.json") or {}
    cells = index.get("cells") or []
    if isinstance(cells, dict):
        cells = [{"name": key, **value} for key, value in cells.items() if isinstance(value, dict)]
    jobs = {}
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        variant, stage = cell.get("variant"), cell.get("stage")
        if (variant is None or stage is None) and cell.get("name"):
            parts = str(cell["name"]).split("/")
            variant, stage = parts[-2:] if len(parts) >= 2 else (None, None)
        if variant is not None and stage is not None:
            jobs[(str(variant), str(stage))] = cell
    scale = index.get("scale")
    return (str(scale) if scale else None), jobs


RUN_FILES = ("config.yaml", "status.json", "metrics.jsonl")


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


def _base_stage(stage: str, stages: list[str]) -> str:
    matches = [s for s in stages if stage == s or stage.startswith(s + "-")]
    return max(matches, key=len) if matches else stage


def expand_cells(exp, scale: Optional[str], runs_dir: Path) -> tuple[str, list[CellSpec]]:
    """(scale, cells) of an experiment at ``scale`` (None: the scale with most
    cells on disk, ties going to the file's default scale)."""
    from avbert.config import to_dict
    from avbert.launch.profile import Profile
    from avbert.launch.registry import expand

    # Any job shape is accepted: only the cells' configs matter here, not where they would run.
    profile = Profile(name="collect", nodes=1 << 20, gpus_per_node=1 << 20)
    expanded = {name: expand(exp, name, profile, runs_dir, check_files=False) for name in exp.spec.scales}
    if scale not in expanded:
        on_disk = set(cells_on_disk(runs_dir, exp.name))
        scale = min(expanded, key=lambda s: (-sum((c.variant, c.stage) in on_disk for c in expanded[s]),
                                             s != exp.spec.default_scale))
    stages = list(exp.spec.stages)
    return scale, [CellSpec(c.variant, c.stage, _base_stage(c.stage, stages), c.kind, c.after, to_dict(c.config),
                            c.seed, c.base_variant) for c in expanded[scale]]


def _extra_cell(runs_dir: Path, name: str, variant: str, stage: str) -> CellSpec:
    config = read_yaml_mapping(runs_dir / name / variant / stage / "config.yaml")
    kind = str((config or {}).get("stage") or ("pretrain" if stage == "pretrain" else stage))
    return CellSpec(variant, stage, stage, kind, None, None)


def load_report(experiment: str, runs_dir: str | Path, search: tuple[Path, ...]) -> ExperimentReport:
    """The experiment ``experiment`` (a name or a YAML path) with its cells under ``runs_dir``."""
    from avbert.launch.spec import read_experiment

    runs_dir = Path(runs_dir)
    recorded = (read_json(runs_dir / experiment / "index.json") or {}).get("file")
    path = find_experiment_file(experiment, search) or find_experiment_file(str(recorded or ""), ())
    if path is None:
        raise FileNotFoundError(f"no experiment file for {experiment!r} (looked in {', '.join(map(str, search))})")
    exp = read_experiment(path)
    scale, jobs = read_index(runs_dir, exp.name)
    scale, cells = expand_cells(exp, scale, runs_dir)
    known = {(c.variant, c.stage) for c in cells}
    extra = [key for key in [*jobs, *cells_on_disk(runs_dir, exp.name)] if key not in known]
    cells += [_extra_cell(runs_dir, exp.name, variant, stage) for variant, stage in dict.fromkeys(extra)]
    report = exp.spec.report
    if report is None:
        return ExperimentReport(exp.name, "sharing", exp.name, scale, cells, {}, jobs)
    reference = {key: dict(vars(value)) for key, value in report.reference.items()}
    return ExperimentReport(exp.name, report.layout, report.title or exp.name, scale, cells, reference, jobs,
                            list(exp.spec.seeds))
