"""What a launch does with each cell (submit, skip, blocked), and the table it prints.

A cell is submitted when it is new (or failed, with ``--retry-failed``); a
completed cell is skipped, and so is one whose job is queued or running. A
downstream cell waits for its pretraining cell: through a Slurm dependency
when that cell is queued or submitted in the same launch, not at all when it
has completed; it is ``blocked`` when that cell failed or is left out.

Columns of the plan table are ``PlanColumn``s (a title and a function of the
``PlannedCell``), in ``PLAN_COLUMNS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from avbert.launch.grid import Cell
from avbert.launch.status import CellStatus


@dataclass
class PlannedCell:
    cell: Cell
    status: CellStatus
    action: str  # "submit", "skip" or "blocked"
    reason: str
    wait_for: Optional[str] = None  # the upstream cell whose job this one depends on (afterok)

    @property
    def submit(self) -> bool:
        return self.action == "submit"


@dataclass(frozen=True)
class PlanColumn:
    title: str
    value: Callable[[PlannedCell], str]
    justify: str = "left"


def _decide(cell: Cell, status: CellStatus, retry_failed: bool, changed: Optional[list[str]],
            rerun_changed: bool) -> tuple[str, str]:
    if changed:
        what = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        if status.live:
            return "skip", f"changed ({what}) but {status.state.lower()} as job {status.job_id}; cancel it first"
        if rerun_changed:
            return "submit", f"config changed ({what}): runs again from scratch"
        return "skip", f"changed since it ran ({what}); --rerun-changed runs it again"
    if status.completed:
        return "skip", "completed"
    if status.live:
        return "skip", f"{status.state.lower()} as job {status.job_id}"
    if status.failed:
        why = status.detail or status.state.lower()
        if not retry_failed:
            return "skip", f"failed ({why}); --retry-failed submits it again"
        return "submit", f"retry after failure ({why})"
    return "submit", "new"


def _upstream(planned: PlannedCell, up: Optional[PlannedCell], up_status: Optional[CellStatus]) -> None:
    """Make ``planned`` wait for, or be blocked by, its pretraining cell."""
    name = planned.cell.upstream
    if up is not None and up.submit:
        planned.wait_for = name
    elif up_status is not None and up_status.completed:
        return
    elif up_status is not None and up_status.live:
        planned.wait_for = name
    else:
        state = up_status.state.lower() if up_status else "new"
        left_out = up is None and (up_status is None or not up_status.failed)
        why = "not selected with --only" if left_out else state
        planned.action, planned.reason = "blocked", f"needs {name} ({why})"


def make_plan(cells: list[Cell], statuses: dict[str, CellStatus], retry_failed: bool = False,
              selected: Optional[set[str]] = None, changed: Optional[dict[str, list[str]]] = None,
              rerun_changed: bool = False) -> list[PlannedCell]:
    """One decision per selected cell, upstream cells first. ``changed``: the cells whose
    resolved config differs from the one their run directory recorded, with the keys
    that differ; they are skipped unless ``rerun_changed``."""
    changed = changed or {}
    plan: dict[str, PlannedCell] = {}
    for cell in sorted(cells, key=lambda c: c.upstream is not None):
        if selected is not None and cell.name not in selected:
            continue
        status = statuses.get(cell.name) or CellStatus(cell.name, "NEW")
        action, reason = _decide(cell, status, retry_failed, changed.get(cell.name), rerun_changed)
        planned = PlannedCell(cell, status, action, reason)
        if planned.submit and cell.upstream:
            _upstream(planned, plan.get(cell.upstream), statuses.get(cell.upstream))
        plan[cell.name] = planned
    return [plan[cell.name] for cell in cells if cell.name in plan]


def _hours(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _time_limit(minutes: int) -> str:
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes} min"


def _gpu_hours(p: PlannedCell) -> str:
    return _hours(p.cell.resources.gpu_hours) if p.cell.resources.gpus else "-"


PLAN_GPU_MEMORY = 80 * 1024**3  # the dry-run's card (80 GB: H100/A100-80GB); tools/plan.py takes others
_memory_cache: dict[str, str] = {}


def _memory(p: PlannedCell) -> str:
    """Predicted per-GPU peak of the cell's config on its resources (avbert.planning)."""
    if not p.cell.resources.gpus:
        return "-"
    cfg, world = p.cell.config, p.cell.resources.world_size
    key = repr((cfg.model, cfg.data, cfg.objective, cfg.train.zero_stage, cfg.train.precision,
                cfg.train.activation_checkpointing, world))
    if key not in _memory_cache:
        try:
            from avbert.planning import format_bytes, plan

            mp = plan(cfg, PLAN_GPU_MEMORY, world)
            verdict = "fits" if mp.fits else "[red]does not fit[/red]"
            _memory_cache[key] = f"{format_bytes(mp.peak)} {verdict} (max batch {mp.max_batch})"
        except Exception as err:  # a prediction must never block a launch
            _memory_cache[key] = f"n/a ({type(err).__name__})"
    return _memory_cache[key]


def _action(p: PlannedCell) -> str:
    style = {"submit": "green", "skip": "dim", "blocked": "red"}[p.action]
    after = f", after {p.wait_for.split('/', 1)[1]}" if p.wait_for else ""
    return f"[{style}]{p.action}[/{style}] {p.reason}{after}"


PLAN_COLUMNS = [
    PlanColumn("cell", lambda p: f"{p.cell.variant}/{p.cell.stage}"),
    PlanColumn("kind", lambda p: p.cell.kind),
    PlanColumn("nodes x tasks", lambda p: p.cell.resources.describe()),
    PlanColumn("time limit", lambda p: _time_limit(p.cell.resources.time_limit_min), "right"),
    PlanColumn("est. hours", lambda p: _hours(p.cell.resources.estimated_hours), "right"),
    PlanColumn("GPU-hours", _gpu_hours, "right"),
    PlanColumn("memory/GPU (80 GB)", _memory, "right"),
    PlanColumn("state", lambda p: p.status.state),
    PlanColumn("action", _action),
]


def plan_table(plan: list[PlannedCell], title: str):
    """The plan as a rich Table, with the GPU-hours to be submitted in the caption."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = PLAN_COLUMNS
    for column in columns:
        table.add_column(column.title, justify=column.justify)
    for planned in plan:
        table.add_row(*(column.value(planned) for column in columns))
    todo = [p for p in plan if p.submit]
    gpu_hours = sum(p.cell.resources.gpu_hours for p in todo)
    table.caption = (f"{len(todo)} of {len(plan)} cells to submit; estimated {gpu_hours:,.0f} GPU-hours"
                     if gpu_hours else f"{len(todo)} of {len(plan)} cells to submit (CPU only)")
    return table
