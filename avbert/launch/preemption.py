"""Stop requests from the scheduler: a signal only raises a flag.

Slurm warns a job before its time limit with the signal of ``--signal``
(``USR1@signal_delay_s``, written by the launcher) and ends a preempted,
requeued or cancelled job with SIGTERM, then SIGKILL after its grace time.
A checkpoint must be written by all ranks together, inside the training
loop, so the handlers here do nothing but record what arrived. The loop
polls ``StopRequest.is_set`` every step and the ranks agree on it with one
collective; see ``avbert.launch.job`` for what happens after the save.

submitit installs its own handlers when a job starts (its USR2 handler
checkpoints and requeues from inside the handler, on rank 0 alone); the job
replaces them with these before training.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Optional

# The time-limit warning. submitit's own default (USR2) is also caught, so that a job
# submitted with submitit's defaults checkpoints the same way.
TIME_LIMIT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
TERMINATION_SIGNALS = (signal.SIGTERM,)
# A warning that arrives this long or longer before the time limit is a preemption
# notice rather than the time-limit signal (some clusters signal preemption the same way).
TIME_LIMIT_SLACK_S = 120


@dataclass
class StopRequest:
    """What the scheduler asked, as recorded by the signal handlers."""

    received: list[str] = field(default_factory=list)
    first_at: Optional[float] = None

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler: remember the signal, nothing else."""
        self.received.append(signal.Signals(signum).name)
        if self.first_at is None:
            self.first_at = time.time()

    def is_set(self) -> bool:
        """Polled by the training loop every step."""
        return bool(self.received)

    @property
    def terminated(self) -> bool:
        """SIGTERM: Slurm is ending this run itself (preemption, requeue or cancel)."""
        return any(name in {s.name for s in TERMINATION_SIGNALS} for name in self.received)

    @property
    def warned(self) -> bool:
        """The time-limit signal (or a preemption notice sent the same way)."""
        return any(name in {s.name for s in TIME_LIMIT_SIGNALS} for name in self.received)


def install_stop_request() -> StopRequest:
    """Route the time-limit and termination signals to a fresh ``StopRequest``."""
    request = StopRequest()
    for sig in (*TIME_LIMIT_SIGNALS, *TERMINATION_SIGNALS):
        signal.signal(sig, request.handle)
    return request


def ignore_time_limit_signals() -> None:
    """After the stage has finished: a warning that arrives while the process exits must not kill it.

    Python restores default handlers while it shuts down, and the default action
    of USR1/USR2 ends the process, which Slurm would record as a failed job.
    """
    for sig in TIME_LIMIT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def is_time_limit(started_at: float, signalled_at: float, time_limit_min: float, signal_delay_s: float) -> bool:
    """Whether a warning at ``signalled_at`` is the time-limit signal of a run started at ``started_at``.

    The job starts a little after Slurm's clock for it, so the expected moment
    (time limit minus signal delay) is matched with ``TIME_LIMIT_SLACK_S`` of slack.
    """
    expected = time_limit_min * 60 - signal_delay_s
    return signalled_at - started_at >= expected - TIME_LIMIT_SLACK_S
