"""Where every cell of an experiment stands, from the scheduler and the run directory.

The scheduler's view comes from ``squeue`` (live jobs) and ``sacct``
(finished ones) on Slurm, or from the controller process of submitit's local
executor; the run's own view from ``status.json`` (state, step, total, last
loss), ``metrics.jsonl`` (speed, hence ETA), ``job.json`` (requeues) and the
checkpoints. Without Slurm tools, the run directory alone is used.

States, worded from ``avbert.rundir.state.decide_cell_state``: ``COMPLETED``; live
scheduler states (``PENDING``, ``RUNNING``, ..., ``PREEMPTED`` and ``REQUEUED`` for a job
stopped to be requeued, and ``SUBMITTED`` for a job the scheduler has not reported yet);
``FAILED`` (with the reason: the scheduler's word, ``TIMEOUT``, ``CANCELLED``, ..., the
run's error, ``preempted and not requeued``, ``job ended without eval.json``); ``UNKNOWN``
(no live job and no record of how it ended); ``NEW`` (never submitted).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from avbert.launch.job import read_journal
from avbert.rundir import (
    EVAL,
    EVALUATED_KINDS,
    LIVE_JOB_STATES,
    METRICS,
    STATUS,
    CellKind,
    CellState,
    MetricsLine,
    RunStatus,
    as_run_status,
    decide_cell_state,
    read_json,
    read_jsonl,
)

# The words of a live job. ``combine`` says ``PREEMPTED`` only while the job may still be
# requeued (``avbert.rundir.state.decide_cell_state``); later the cell is ``FAILED``.
LIVE = LIVE_JOB_STATES
# A job the scheduler has not reported yet is taken as queued for this long after submission.
REPORT_GRACE_S = 600


@dataclass
class CellStatus:
    """One cell as ``tools/status.py`` shows it."""

    name: str
    state: str
    detail: str = ""
    job_id: Optional[str] = None
    step: Optional[int] = None
    total: Optional[int] = None
    loss: Optional[float] = None
    eta_s: Optional[float] = None
    requeues: int = 0
    checkpoint_age_s: Optional[float] = None
    log: Optional[str] = None

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def failed(self) -> bool:
        return self.state in ("FAILED", "UNKNOWN")


def slurm_tools() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sacct") is not None


def _run(cmd: list[str]) -> Optional[str]:
    """The command's output, or None when it could not answer (not started, timed out, failed)."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id (``41`` or ``41_3``) -> state, live jobs from squeue over finished ones from sacct.

    A job Slurm requeued after a preemption is queued again (squeue) while sacct may still
    say ``PREEMPTED``, which alone reads as "not requeued" once the run has been quiet a
    while (``avbert.rundir.state``). When squeue does not answer, such a job is reported
    ``REQUEUED`` (live): the launcher must never submit a second copy of a queued job."""
    if not job_ids or not slurm_tools():
        return {}
    states: dict[str, str] = {}
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    for line in (_run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)]) or "").splitlines():
        job_id, _, state = line.partition("|")
        if state:
            states[job_id.strip()] = state.split()[0]
    user = os.environ.get("USER") or getpass.getuser()
    queue = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T"])
    if queue is None:
        return {job_id: "REQUEUED" if state == "PREEMPTED" else state for job_id, state in states.items()}
    for line in queue.splitlines():
        job_id, _, state = line.partition("|")
        if state:
            states[job_id.strip()] = state.strip()
    return states


def local_state(job_id: str) -> Optional[str]:
    """RUNNING while the local executor's controller process lives (a reused pid does not count)."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return None
    try:
        command = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except OSError:
        return "RUNNING"  # no /proc to tell a reused pid apart
    return "RUNNING" if b"submitit" in command else None


def read_run_status(run_dir: Path) -> Optional[RunStatus]:
    """The run's ``status.json``, typed; None when it has none (or not a JSON object)."""
    return RunStatus.from_json(read_json(run_dir / STATUS))


def decide(entry: dict, run: Optional[Mapping | RunStatus], scheduler: Optional[str], evaluated: bool = False,
           now: Optional[float] = None) -> CellState:
    """The cell's decided state from its index entry (stage kind, submission time), the run's
    status.json (as read, or typed) and the scheduler's current word on its job."""
    submitted = entry.get("submitted_unix")
    return decide_cell_state(scheduler, run, needs_eval=entry.get("kind") in EVALUATED_KINDS, evaluated=evaluated,
                             submitted_unix=submitted if isinstance(submitted, (int, float)) else None, now=now)


def combine(entry: dict, run: Optional[Mapping | RunStatus], scheduler: Optional[str], evaluated: bool = False,
            now: Optional[float] = None) -> tuple[str, str]:
    """(state, detail) from the index entry, the run's status.json, the scheduler's current state
    and whether the run wrote its ``eval.json``: ``decide``'s decision in ``tools/status.py``'s words.
    A state the scheduler does not confirm (no word on the job) is worded from the index entry:
    ``NEW`` without a job, ``SUBMITTED`` within ``REPORT_GRACE_S`` of a Slurm submission, else
    ``UNKNOWN``."""
    run = as_run_status(run)
    decided = decide(entry, run, scheduler, evaluated, now)
    if decided.kind is CellKind.COMPLETED:
        return "COMPLETED", decided.reason
    if decided.kind is CellKind.FAILED:
        return "FAILED", decided.reason
    if decided.live:
        return str(scheduler).split()[0].upper(), decided.reason
    if not entry.get("job_id"):
        return "NEW", ""
    submitted = entry.get("submitted_unix")
    submitted = submitted if isinstance(submitted, (int, float)) else 0
    if entry.get("cluster") == "slurm" and (time.time() if now is None else now) - submitted < REPORT_GRACE_S:
        return "SUBMITTED", "not reported by Slurm yet"
    run_state = run.state if run is not None and run.state is not None else "none"
    unevaluated = ", no eval.json" if decided.reason == "evaluating" else ""
    return "UNKNOWN", f"no live job; run state {run_state}{unevaluated}"


def scheduler_states(index: dict) -> dict[str, str]:
    """Scheduler state of every cell's current job, by cell name."""
    cells = index.get("cells", {})
    slurm_ids = [e["job_id"] for e in cells.values() if e.get("job_id") and e.get("cluster") == "slurm"]
    slurm = slurm_states(slurm_ids)
    out = {}
    for name, entry in cells.items():
        job_id = entry.get("job_id")
        if not job_id:
            continue
        state = slurm.get(job_id) if entry.get("cluster") == "slurm" else local_state(job_id)
        if state is not None:
            out[name] = state
    return out


def gather(index: dict, names: Optional[list[str]] = None, details: bool = False) -> dict[str, CellStatus]:
    """Status of the named cells (default: all in the index); ``details`` adds ETA and checkpoint age."""
    states = scheduler_states(index)
    out = {}
    for name in names if names is not None else list(index.get("cells", {})):
        entry = index.get("cells", {}).get(name, {})
        run_dir = Path(entry["run_dir"]) if entry.get("run_dir") else None
        run = read_run_status(run_dir) if run_dir else None
        evaluated = bool(run_dir) and (run_dir / EVAL).is_file()
        state, detail = combine(entry, run, states.get(name), evaluated)
        if state == "FAILED" and run_dir:
            message = journal_failure(run_dir, entry.get("job_id"))
            if message:  # why the job gave up, before what its run last reported
                detail = f"{message}; {detail}" if detail else message
        status = CellStatus(name, state, detail, entry.get("job_id"), log=entry.get("log"))
        if run is not None:
            status.step, status.total, status.loss = run.step, run.total_steps, run.loss
        if run_dir and details:
            _add_details(status, run_dir, entry.get("job_id"))
        out[name] = status
    return out


def journal_failure(run_dir: Path, job_id: Optional[str]) -> Optional[str]:
    """Why the job gave up, as it wrote in ``job.json`` (e.g. more runs lost to node failures than its
    requeue limit, naming the nodes); None when its last stop carries no message."""
    stops = [s for s in read_journal(run_dir).get("stops", []) if job_id and s.get("job_id") == job_id]
    return stops[-1].get("message") if stops else None


def _add_details(status: CellStatus, run_dir: Path, job_id: Optional[str]) -> None:
    starts = [s for s in read_journal(run_dir).get("starts", []) if s.get("job_id") == job_id]
    status.requeues = max(len(starts) - 1, 0)
    status.checkpoint_age_s = checkpoint_age(run_dir)
    if status.live and status.step is not None and status.total:
        rate = seconds_per_step(run_dir)
        status.eta_s = rate * (status.total - status.step) if rate else None


def checkpoint_age(run_dir: Path) -> Optional[float]:
    """Seconds since the newest complete checkpoint was written."""
    from avbert.train.checkpoint import latest_complete

    info = latest_complete(run_dir)
    if info is None:
        return None
    return time.time() - (info.path / "rank_0.json").stat().st_mtime


def seconds_per_step(run_dir: Path, window: int = 20) -> Optional[float]:
    """Recent training speed from ``metrics.jsonl`` (within the current run of the job)."""
    lines = [MetricsLine.from_json(record) for record in read_jsonl(run_dir / METRICS)[0][-window:]]
    points = [(line.step, line.elapsed_s) for line in lines
              if line is not None and line.step is not None and line.elapsed_s is not None]
    start = 0
    for i in range(1, len(points)):
        # A resumed attempt logs again from its checkpoint's step and elapsed time, both below
        # what the killed attempt had logged after that checkpoint: the speed is the new one's.
        if points[i][1] < points[i - 1][1]:
            start = i
    points = points[start:]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
