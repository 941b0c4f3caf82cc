"""What a cell's states mean: the run's own (``RunState``, in ``status.json``, defined with
its record in ``avbert.rundir.records``) and the scheduler's (``job_state_kind``), one
vocabulary for the engine, the launcher, ``tools/status.py`` and ``collect``.

Slurm's states (``squeue``/``sacct``, upper case) and ``SUBMITTED`` (a job the scheduler
has not reported yet) fall into four kinds: live and queued (``pending``), live and
running (``running``), stopped to be requeued (``preempted``: Slurm's ``PREEMPTED`` and
``REQUEUED``: the job comes back, and the run resumes from its newest complete
checkpoint), ended badly (``failed``); and ``COMPLETED``.

``decide_cell_state`` puts the two together: the one decision of where a cell stands,
which ``tools/status.py`` and the launcher (``avbert.launch.status.combine``) and the
results tables (``avbert.results.runs.stage_state``) each word their own way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Optional

from avbert.rundir.records import RunState, RunStatus, as_run_status

PENDING_JOB_STATES = frozenset({"PENDING", "SUBMITTED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                                "RESIZING"})
RUNNING_JOB_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"})
PREEMPTED_JOB_STATES = frozenset({"PREEMPTED", "REQUEUED"})
LIVE_JOB_STATES = PENDING_JOB_STATES | RUNNING_JOB_STATES | PREEMPTED_JOB_STATES
FAILED_JOB_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                               "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


def job_state_kind(state: Optional[str]) -> Optional[str]:
    """``pending``, ``running``, ``preempted``, ``failed``, ``completed`` or None (unknown or
    no state) for a scheduler state, whatever its case (``sacct`` may add ``CANCELLED by
    123``: the first word counts)."""
    if not state:
        return None
    word = str(state).split()[0].upper()
    for kind, states in (("pending", PENDING_JOB_STATES), ("running", RUNNING_JOB_STATES),
                         ("preempted", PREEMPTED_JOB_STATES), ("failed", FAILED_JOB_STATES)):
        if word in states:
            return kind
    return "completed" if word == "COMPLETED" else None


# Stage kinds whose stage is done only once it has written ``eval.json`` (the downstream
# stages: training, then the evaluation of the exported classifier, in one job).
EVALUATED_KINDS = ("finetune", "linear")

# How long after the run's last word (``status.json``'s update time) a job the scheduler
# calls ``PREEMPTED`` may still come back. Slurm requeues a preempted job at once, as
# ``PENDING`` (``squeue``'s word, which ``avbert.launch.status.slurm_states`` prefers to
# ``sacct``'s ``PREEMPTED``); a job still ``PREEMPTED`` this long after its run last wrote
# was not requeued (``PreemptMode=CANCEL``, requeue disabled) and will not run again.
PREEMPT_REQUEUE_GRACE_S = 600.0


class CellKind(str, Enum):
    """Where a cell stands, as ``decide_cell_state`` decides it."""

    NOT_STARTED = "not started"  # no job word and no status.json: never started, or not reported yet
    PENDING = "pending"
    RUNNING = "running"  # training, or (a downstream stage) evaluating
    PREEMPTED = "preempted"  # stopped to be requeued; resumes from its newest complete checkpoint
    COMPLETED = "completed"  # the stage is done (with its eval.json, where one is needed)
    FAILED = "failed"  # ended and will not go on by itself: a launch with --retry-failed resumes it

    def __str__(self) -> str:
        return self.value


LIVE_KINDS = frozenset({CellKind.PENDING, CellKind.RUNNING, CellKind.PREEMPTED})


@dataclass(frozen=True)
class CellState:
    """A cell's decided state: its ``kind``, why (``reason``: the scheduler's word for a job
    that ended badly, the run's error, ``evaluating``, ...; may be empty) and whether the
    kind rests on the scheduler's word (``by_scheduler``) or on the run's files alone (no
    word from the scheduler, or a recorded word older than what the run wrote since)."""

    kind: CellKind
    reason: str = ""
    by_scheduler: bool = False

    @property
    def live(self) -> bool:
        """A job the scheduler holds (queued, running or to be requeued): not to be submitted again."""
        return self.by_scheduler and self.kind in LIVE_KINDS


def _time(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _superseded(run: Optional[RunState], run_unix: Optional[float], word_unix: Optional[float]) -> bool:
    """Whether the run's word is newer than a recorded job word: by their times when both are
    known; else a run's ``running``, ``preempted`` or ``completed`` is (a run writes them only
    while its job lives, after the job was queued) and its ``failed`` is not (a failed run's
    cell is recorded live again only by a resubmission)."""
    if run is None:
        return False
    if run_unix is not None and word_unix is not None:
        return run_unix > word_unix
    return run is not RunState.FAILED


def _may_be_requeued(last_seen: Optional[float], as_of: Optional[float]) -> bool:
    """Whether a ``PREEMPTED`` job may still be requeued: its run showed life (or the job was
    submitted) at most ``PREEMPT_REQUEUE_GRACE_S`` before the scheduler said ``PREEMPTED``."""
    return last_seen is not None and as_of is not None and as_of - last_seen <= PREEMPT_REQUEUE_GRACE_S


def decide_cell_state(job_state: Optional[str], status: Optional[Mapping | RunStatus], *, needs_eval: bool = False,
                      evaluated: bool = False, job_state_current: bool = True,
                      job_state_unix: Optional[float] = None, submitted_unix: Optional[float] = None,
                      now: Optional[float] = None) -> CellState:
    """Where a cell stands, from the scheduler's word on its job and the run's own.

    ``job_state``: the scheduler's state of the cell's job (a Slurm word, ``SUBMITTED``, or
    the launcher's record of it; None: no word). ``job_state_current``: the word is the
    scheduler's answer now (``tools/status.py``, the launcher); False for a word recorded
    earlier (the index the results tables read), taken at ``job_state_unix`` when known.
    ``status``: the run's ``status.json`` (its ``state``, ``error`` and ``updated_unix`` count),
    as read (a mapping) or as a ``RunStatus``, or None. ``needs_eval``: a downstream stage,
    done only with its ``eval.json``; ``evaluated``: that file exists. ``submitted_unix``: when
    the job was submitted.

    The rules, in order:

    * the stage is done (``COMPLETED``) once its run completed, with ``eval.json`` where one
      is needed, whatever the job does now (e.g. still exporting);
    * a job that ended badly (``FAILED``, ``TIMEOUT``, ``CANCELLED``, ...) failed, and a job
      that ended well before the stage was done (no ``eval.json``, or a run that never
      finished) failed too: nothing will resume it;
    * a live job word (queued, running, to be requeued) decides, so a failed run whose job
      is queued again reads as queued (resubmitted), a preempted run whose job runs again as
      running; a recorded word gives way to a run's word written after it (``_superseded``);
    * ``PREEMPTED`` is live only while a requeue may still come: within
      ``PREEMPT_REQUEUE_GRACE_S`` of the run's last ``status.json`` update (or, with no
      status, of the submission), counted to the time of the word; later, the job was not
      requeued and the cell failed (``preempted and not requeued``). ``REQUEUED`` is live;
    * without a job word the run's own word stands, not confirmed by the scheduler
      (``by_scheduler`` False): failed, running or preempted, running (evaluating) for a
      trained downstream stage without ``eval.json``; with no status either, ``NOT_STARTED``.
    """
    status = as_run_status(status)
    run = status.state if status is not None else None
    error = status.error if status is not None else None
    run_unix = status.updated_unix if status is not None else None
    word = str(job_state).split()[0].upper() if job_state and str(job_state).split() else None
    job = job_state_kind(word)
    if evaluated or (run is RunState.COMPLETED and not needs_eval):
        return CellState(CellKind.COMPLETED, f"job {word}" if job in ("pending", "running", "preempted") else "")
    if job == "failed":
        return CellState(CellKind.FAILED, f"{word}: {error}" if run is RunState.FAILED and error else word, True)
    if job == "completed":
        if run is RunState.COMPLETED:
            reason = "job ended without eval.json"
        elif run is RunState.FAILED:
            reason = error or "run failed"
        else:
            reason = "job ended before the stage finished"
        return CellState(CellKind.FAILED, reason, True)
    word_unix = None if job_state_current else _time(job_state_unix)
    if job is not None and not job_state_current and _superseded(run, run_unix, word_unix):
        job = None  # the run wrote after the word was recorded: its own word is the newer one
    if job is not None:
        if word == "PREEMPTED":
            seen = [t for t in (run_unix, _time(submitted_unix)) if t is not None]
            as_of = (time.time() if now is None else now) if job_state_current else word_unix
            if not _may_be_requeued(max(seen) if seen else None, as_of):
                return CellState(CellKind.FAILED, "preempted and not requeued", True)
        reason = "evaluating" if run is RunState.COMPLETED and job == "running" else ""
        return CellState(CellKind(job), reason, True)
    if run is RunState.FAILED:
        return CellState(CellKind.FAILED, error or "run failed")
    if run is RunState.COMPLETED:  # a downstream stage between its training and its eval.json
        return CellState(CellKind.RUNNING, "evaluating")
    if run in (RunState.RUNNING, RunState.PREEMPTED):
        return CellState(CellKind(run.value))
    return CellState(CellKind.NOT_STARTED)
