"""Reading one run directory back: config, metrics, evaluation, state, cost.

A run directory (``<runs_dir>/<experiment>/<variant>/<stage>/``) holds what the
training engine writes: ``config.yaml`` (the resolved config), ``metrics.jsonl``
(one flat JSON object per log step), ``status.json`` (state, step, total
steps, error), checkpoints whose rank markers record the world size, and, for
downstream stages, ``eval.json``. Every file is optional here: a cell that has
not started, is running or has died reads back as far as it got.

Cost of a stage:

* ``hours``: wall time x ranks. ``time/elapsed_s`` restarts at 0 when a run is
  resumed, so the time of each segment (the last elapsed value before it drops)
  is summed; time spent after the last checkpoint of a killed segment, which
  the resumed run re-logs, is not counted twice.
* ``clips_per_s``: median of the logged ``perf/clips_per_s`` (all ranks),
  robust to the slow first interval.
* ``peak_mem_gb``: largest logged ``perf/peak_mem_mb`` (GPU allocated memory,
  or the peak resident set on CPU), in GiB.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

@dataclass
class StageRun:
    """What one stage of one cell left on disk."""

    stage: str
    path: Path
    config: Optional[dict] = None
    metrics: list[dict] = field(default_factory=list)
    status: Optional[dict] = None
    eval: Optional[dict] = None
    world_size: int = 1

    @property
    def exists(self) -> bool:
        return self.config is not None or self.status is not None or bool(self.metrics)

    @property
    def step(self) -> Optional[int]:
        if self.status and self.status.get("step") is not None:
            return int(self.status["step"])
        return int(self.metrics[-1]["step"]) if self.metrics and "step" in self.metrics[-1] else None

    @property
    def total_steps(self) -> Optional[int]:
        if self.status and self.status.get("total_steps") is not None:
            return int(self.status["total_steps"])
        train = (self.config or {}).get("train") or {}
        return train.get("steps")

    @property
    def device(self) -> Optional[str]:
        """``cuda`` or ``cpu`` when the run says so (status, then config), else None."""
        named = (self.status or {}).get("device") or ((self.config or {}).get("train") or {}).get("device")
        if not named or named == "auto":
            return None
        return "cuda" if str(named).startswith("cuda") else "cpu"


def read_json(path: Path) -> Optional[dict]:
    """A JSON object from ``path``, or None when it is absent or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml_mapping(path: Path) -> Optional[dict]:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def read_metrics_lines(path: Path) -> list[dict]:
    """Log lines of ``metrics.jsonl``; an unreadable line (the tail of a killed
    writer) is skipped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
    run.config = read_yaml_mapping(path / "config.yaml")
    run.metrics = read_metrics_lines(path / "metrics.jsonl")
    run.status = read_json(path / "status.json")
    run.eval = read_json(path / "eval.json")
    recorded = (run.status or {}).get("world_size") or checkpoint_world_size(path)
    run.world_size = int(recorded) if recorded else 1
    return run


FAILED_JOB_STATES = ("failed", "cancelled", "timeout", "out_of_memory", "node_fail", "boot_fail", "deadline",
                     "revoked", "special_exit")
PENDING_JOB_STATES = ("pending", "submitted", "requeued", "requeue_hold", "configuring")
RUNNING_JOB_STATES = ("running", "completing")


def stage_state(run: StageRun, job_state: Optional[str] = None, needs_eval: bool = False) -> str:
    """``done``, ``running``, ``preempted``, ``pending``, ``failed`` or ``missing``,
    from the stage's files and the scheduler's word (the launcher's index).

    A training stage is done when its status says completed; a downstream
    stage (``needs_eval``) only once its ``eval.json`` exists, and it is
    running (evaluating) between the two. The scheduler wins over a status
    file that cannot be current: a job reported failed, cancelled or timed out
    died without writing its status, and a failed run whose job is queued or
    running again has been resubmitted.
    """
    job = (job_state or "").lower()
    status = ((run.status or {}).get("state") or "").lower()
    if run.eval is not None or (status == "completed" and not needs_eval):
        return "done"
    if job in FAILED_JOB_STATES or (status == "failed" and job not in PENDING_JOB_STATES + RUNNING_JOB_STATES):
        return "failed"
    if status == "completed":  # a downstream stage between training and its evaluation
        return "failed" if job == "completed" else "running"
    if status in ("running", "preempted"):
        return status
    if job in RUNNING_JOB_STATES:
        return "running"
    if job in PENDING_JOB_STATES:
        return "pending"
    return "running" if run.exists else "missing"


def segment_seconds(metrics: list[dict]) -> float:
    """Wall seconds over the run's segments (``time/elapsed_s`` restarts on resume)."""
    total, last = 0.0, None
    for record in metrics:
        elapsed = record.get("time/elapsed_s")
        if not isinstance(elapsed, (int, float)):
            continue
        if last is not None and elapsed < last:
            total += last
        last = elapsed
    return total + (last or 0.0)


def stage_hours(run: StageRun) -> Optional[float]:
    if not run.metrics:
        return None
    return segment_seconds(run.metrics) * run.world_size / 3600.0


def stage_clips_per_s(run: StageRun) -> Optional[float]:
    values = [r["perf/clips_per_s"] for r in run.metrics if isinstance(r.get("perf/clips_per_s"), (int, float))]
    return float(statistics.median(values)) if values else None


def stage_peak_mem_gb(run: StageRun) -> Optional[float]:
    values = [r["perf/peak_mem_mb"] for r in run.metrics if isinstance(r.get("perf/peak_mem_mb"), (int, float))]
    return max(values) / 1024.0 if values else None


def stage_detail(run: StageRun, state: str) -> str:
    """A short human note: progress of a running stage, the error of a failed one."""
    if state == "running" and (run.status or {}).get("state") == "completed":
        return f"{run.stage} evaluating"
    if state in ("running", "preempted") and run.step is not None:
        return f"{run.stage} {run.step}/{run.total_steps if run.total_steps is not None else '?'}"
    if state == "failed":
        error = (run.status or {}).get("error")
        if not error and (run.status or {}).get("state") == "completed":
            error = "ended without eval.json"
        return f"{run.stage}: {error}" if error else run.stage
    if state in ("pending", "missing"):
        return run.stage
    return ""
