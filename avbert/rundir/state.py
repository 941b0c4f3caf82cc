"""What a cell's states mean: the run's own (``RunState``, in ``status.json``) and the
scheduler's (``job_state_kind``), one vocabulary for the engine, the launcher,
``tools/status.py`` and ``collect``.

Slurm's states (``squeue``/``sacct``, upper case) and ``SUBMITTED`` (a job the scheduler
has not reported yet) fall into four kinds: live and queued (``pending``), live and
running (``running``), stopped to be requeued (``preempted``: Slurm's ``PREEMPTED`` and
``REQUEUED``: the job comes back, and the run resumes from its newest complete
checkpoint), ended badly (``failed``); and ``COMPLETED``.
"""

from __future__ import annotations

from enum import Enum
from typing import Optional


class RunState(str, Enum):
    """A run's own word on itself, ``status.json``'s ``state``: the engine writes it, the
    launcher, ``tools/status.py`` and ``collect`` read it (each beside the scheduler's
    state, classified by ``job_state_kind``). A ``str``: it is written and compared as the
    plain word."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"  # stopped on a signal after a complete checkpoint, to be requeued

    def __str__(self) -> str:
        return self.value

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
