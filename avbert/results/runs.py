"""Reading one run directory back: config, metrics, evaluation, state, cost.

A run directory (``<runs_dir>/<experiment>/<variant>/<stage>/``) holds what the
training engine writes: ``config.yaml`` (the resolved config), ``metrics.jsonl``
(one flat JSON object per log step), ``status.json`` (state, step, total
steps, error), checkpoints whose rank markers record the world size, and, for
downstream stages, ``eval.json``. Every file is optional here: a cell that has
not started, is running or has died reads back as far as it got.

Cost of a stage:

* ``hours``: wall time x ranks: the last ``time/elapsed_s``, which the engine
  carries over a resume from the checkpoint it resumes from; the time a killed
  attempt spent after its last checkpoint is redone, and counted once.
* ``clips_per_s``: median of the logged ``perf/clips_per_s`` (all ranks),
  robust to the slow first interval.
* ``peak_mem_gb``: largest logged ``perf/peak_mem_mb`` (GPU allocated memory,
  or the peak resident set on CPU), in GiB.

``row_cost`` sums these over the runs of a table row; ``provenance`` says how many runs
the row has, their commits and the manifests they read.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from avbert.rundir import (
    CONFIG,
    EVAL,
    METRICS,
    STATUS,
    CellKind,
    CellState,
    EvalRecord,
    MetricsLine,
    RunState,
    RunStatus,
    decide_cell_state,
    read_json,
    read_jsonl,
    read_yaml_mapping,
)


@dataclass
class StageRun:
    """What one stage of one cell left on disk: the files' objects as read (``status``,
    ``eval``, ``metrics``: what the tables pass on), and the same as typed records
    (``run_status``, ``eval_record``, ``metric_lines``) for the questions asked of them."""

    stage: str
    path: Path
    config: Optional[dict] = None
    metrics: list[dict] = field(default_factory=list)
    status: Optional[dict] = None
    eval: Optional[dict] = None
    world_size: int = 1
    unreadable_lines: int = 0  # metrics.jsonl lines that are not JSON (a killed writer's last line)

    @property
    def exists(self) -> bool:
        return self.config is not None or self.status is not None or bool(self.metrics)

    @property
    def run_status(self) -> Optional[RunStatus]:
        """``status.json``, typed; None without one."""
        return RunStatus.from_json(self.status)

    @property
    def eval_record(self) -> Optional[EvalRecord]:
        """``eval.json``, typed; None without one."""
        return EvalRecord.from_json(self.eval)

    @property
    def metric_lines(self) -> list[MetricsLine]:
        """The readable lines of ``metrics.jsonl``, typed."""
        return [line for line in map(MetricsLine.from_json, self.metrics) if line is not None]

    @property
    def step(self) -> Optional[int]:
        """The step the status names, else the last logged line's."""
        status = self.run_status
        if status is not None and status.step is not None:
            return status.step
        lines = self.metric_lines
        return lines[-1].step if lines else None

    @property
    def total_steps(self) -> Optional[int]:
        status = self.run_status
        if status is not None and status.total_steps is not None:
            return status.total_steps
        train = (self.config or {}).get("train") or {}
        return train.get("steps")

    @property
    def device(self) -> Optional[str]:
        """``cuda`` or ``cpu`` when the run says so (status, then config), else None."""
        status = self.run_status
        named = (status.device if status else None) or ((self.config or {}).get("train") or {}).get("device")
        if not named or named == "auto":
            return None
        return "cuda" if str(named).startswith("cuda") else "cpu"


def checkpoint_world_size(run_dir: Path) -> Optional[int]:
    """World size recorded by the newest checkpoint's rank-0 marker."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    for path in sorted(root.glob("step_*"), reverse=True):
        marker = read_json(path / "rank_0.json")
        if marker and marker.get("world_size"):
            return int(marker["world_size"])
    return None


def read_stage(path: Path, stage: str) -> StageRun:
    """Everything a stage's run directory holds (absent files read as empty)."""
    run = StageRun(stage, path)
    if not path.is_dir():
        return run
    run.config = read_yaml_mapping(path / CONFIG)
    run.metrics, run.unreadable_lines = read_jsonl(path / METRICS)
    run.status = read_json(path / STATUS)
    run.eval = read_json(path / EVAL)
    status = run.run_status
    run.world_size = (status.world_size if status else None) or checkpoint_world_size(path) or 1
    return run


def stage_decision(run: StageRun, job_state: Optional[str] = None, needs_eval: bool = False,
                   job_state_unix: Optional[float] = None) -> CellState:
    """The stage's decided state (``avbert.rundir.state.decide_cell_state``) from its files and
    the scheduler's word as the launcher last recorded it in its index (``job_state``, taken
    at ``job_state_unix`` when known): a word the run's files may have overtaken since."""
    return decide_cell_state(job_state, run.status, needs_eval=needs_eval, evaluated=run.eval is not None,
                             job_state_current=False, job_state_unix=job_state_unix)


STAGE_WORDS = {CellKind.COMPLETED: "done", CellKind.FAILED: "failed", CellKind.PENDING: "pending",
               CellKind.RUNNING: "running", CellKind.PREEMPTED: "preempted"}


def stage_word(run: StageRun, decided: CellState) -> str:
    """A decided state in the results tables' words: ``done``, ``running``, ``preempted``,
    ``pending``, ``failed`` or ``missing``; a stage not started reads ``running`` once it
    has files (the engine writes its config before its first status) and ``missing`` before."""
    if decided.kind is CellKind.NOT_STARTED:
        return "running" if run.exists else "missing"
    return STAGE_WORDS[decided.kind]


def stage_state(run: StageRun, job_state: Optional[str] = None, needs_eval: bool = False,
                job_state_unix: Optional[float] = None) -> str:
    """``done``, ``running``, ``preempted``, ``pending``, ``failed`` or ``missing``, from the
    stage's files and the scheduler's recorded word (``stage_decision``).

    A training stage is done when its status says completed; a downstream stage
    (``needs_eval``) only once its ``eval.json`` exists, and it is running (evaluating)
    between the two, failed once its job ended without it. A job reported failed,
    cancelled or timed out died without writing its status; a failed run whose job is
    recorded queued or running again has been resubmitted; a preempted job that was not
    requeued has failed.
    """
    return stage_word(run, stage_decision(run, job_state, needs_eval, job_state_unix))


def stage_hours(run: StageRun) -> Optional[float]:
    """Training wall time x ranks: the last logged ``time/elapsed_s``, which the engine carries
    over a resume (the checkpoint records it), so it covers every attempt up to the last
    checkpoint it resumed from."""
    elapsed = logged(run, "time/elapsed_s")
    return elapsed[-1] * run.world_size / 3600.0 if elapsed else None


def logged(run: StageRun, name: str) -> list[float]:
    """Every number logged under ``name``, in order (lines without one left out)."""
    return [value for value in (line.get(name) for line in run.metric_lines) if value is not None]


def stage_clips_per_s(run: StageRun) -> Optional[float]:
    values = logged(run, "perf/clips_per_s")
    return float(statistics.median(values)) if values else None


def stage_peak_mem_gb(run: StageRun) -> Optional[float]:
    values = logged(run, "perf/peak_mem_mb")
    return max(values) / 1024.0 if values else None


def stage_detail(run: StageRun, state: str, reason: str = "") -> str:
    """A short human note: progress of a running stage, the error of a failed one (the run's
    own, else ``reason``: the decision's, e.g. the scheduler's word)."""
    status = run.run_status or RunStatus(state=None)
    if state == "running" and status.state is RunState.COMPLETED:
        return f"{run.stage} evaluating"
    if state in ("running", "preempted") and run.step is not None:
        return f"{run.stage} {run.step}/{run.total_steps if run.total_steps is not None else '?'}"
    if state == "failed":
        error = status.error
        if not error and status.state is RunState.COMPLETED:
            error = "ended without eval.json"
        error = error or reason
        return f"{run.stage}: {error}" if error else run.stage
    if state in ("pending", "missing"):
        return run.stage
    return ""


def row_cost(runs: list[StageRun]) -> dict:
    hours = [h for h in (stage_hours(r) for r in runs) if h is not None]
    speeds = [s for s in (stage_clips_per_s(r) for r in runs) if s is not None]
    peaks = [p for p in (stage_peak_mem_gb(r) for r in runs) if p is not None]
    return {"hours": sum(hours) if hours else None, "clips_per_s": speeds[0] if speeds else None,
            "peak_mem_gb": max(peaks) if peaks else None, "_runs": runs, **provenance(runs)}


def provenance(runs: list[StageRun]) -> dict:
    """Where a row's numbers come from: how many runs, their git commits (``config.yaml``)
    and the SHA-256 of each manifest they read (``status.json``), and a warning when runs
    that should agree do not (several commits, one manifest path read with different
    contents) or when a run's metrics log has lines that could not be read (a writer
    killed mid-line: the curves and costs miss them)."""
    present = [run for run in runs if run.exists]
    commits = sorted({str(c) for c in ((run.config or {}).get("git_commit") for run in present) if c})
    hashes: dict[str, set] = {}
    for run in present:
        data = (run.config or {}).get("data") or {}
        path = data.get("manifest") if data.get("source") == "manifest" else None
        status = run.run_status
        digest = status.manifest_sha256 if status else None
        if path and digest:
            hashes.setdefault(str(path), set()).add(str(digest))
    notes = []
    if len(commits) > 1:
        notes.append(f"runs disagree on commit ({len(commits)} commits)")
    notes += [f"{Path(path).name} read with {len(d)} different contents" for path, d in hashes.items() if len(d) > 1]
    notes += [f"{run.stage}: {run.unreadable_lines} unreadable metrics line(s)" for run in present
              if run.unreadable_lines]
    return {"runs": len(present) or None, "commit": "+".join(c[:10] for c in commits) or None,
            "manifest_sha256": "; ".join(f"{Path(p).name}:{','.join(sorted(x)[:1])[:12]}" for p, x in hashes.items())
            or None, "provenance": "; ".join(notes) or None}
