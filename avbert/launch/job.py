"""What runs inside one Slurm (or local) job: one cell's stage, on every task.

Each task exports its place in the job for ``torch.distributed`` from the
scheduler's environment (submitit's ``TorchDistributedEnvironment``), then
runs the stage through ``avbert.train.run_stage``; the stage resumes from the
newest complete checkpoint of the run directory by itself.

Time limits and preemption. Signal handlers only raise a flag
(``avbert.launch.preemption``); the training loop polls it every step, the
ranks agree with one collective, and all of them save a complete checkpoint
before the loop returns ``preempted``. Then:

- after the time-limit signal (``USR1``), rank 0 requeues the job through
  submitit's job environment (``scontrol requeue <job id>`` on Slurm, exit
  code 144 for submitit's local controller, which restarts the tasks) and
  exits, as submitit's own handler would. Requeues after the time limit are
  counted in ``job.json``; past the profile's ``requeue_limit`` the job stops.
  submitit's handler is not used because it checkpoints from inside the
  signal handler, on rank 0 alone, in the middle of a step.
- after SIGTERM (Slurm preempting, requeueing or cancelling the job), Slurm
  already decides whether the job comes back: the job only saves and exits
  with an error, so a stopped stage never reads as COMPLETED to ``afterok``.

``job.json`` in the run directory records every start (job id, host, code
directory) and every stop, for ``tools/status.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import submitit

from avbert.config import config_from_dict
from avbert.launch.preemption import (
    StopRequest,
    ignore_time_limit_signals,
    install_stop_request,
    is_time_limit,
)
from avbert.rundir import JOURNAL, read_json, write_json

REQUEUE_EXIT = 255  # what submitit's own handler exits with after requeueing

logger = logging.getLogger("avbert.launch")


def requeue(env, countdown: int) -> None:
    """Put this job back in the queue (``scontrol requeue`` on Slurm), ``countdown`` the
    requeues it has left. submitit has no public call for this: its own checkpointing
    (``Checkpointable``) requeues from its signal handler, while the suite handles the
    signals itself (``avbert.launch.preemption``). The private ``JobEnvironment._requeue``
    is used here alone; tests/test_launch_job.py fails on a submitit whose
    ``JobEnvironment`` lacks it or changed its signature."""
    env._requeue(countdown)


class StageInterrupted(RuntimeError):
    """The stage saved a checkpoint and stopped before its last step."""


def read_journal(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / JOURNAL) or {"starts": [], "stops": []}


def _write_journal(run_dir: str | Path, journal: dict) -> None:
    path = Path(run_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, journal)


def record_start(run_dir: str | Path, job_id: str, world_size: int) -> None:
    """One line per start of the job: a requeued job appears once per run."""
    import avbert

    journal = read_journal(run_dir)
    journal["starts"].append({"time": time.time(), "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                              "world_size": world_size, "code_dir": str(Path(avbert.__file__).parents[1]),
                              "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))})
    _write_journal(run_dir, journal)


def record_stop(run_dir: str | Path, job_id: str, cause: str, step: int) -> int:
    """Add a stop; return how many stops of this cause the job (this job id) has had."""
    journal = read_journal(run_dir)
    journal["stops"].append({"time": time.time(), "job_id": job_id, "cause": cause, "step": step})
    _write_journal(run_dir, journal)
    return sum(1 for stop in journal["stops"] if stop["job_id"] == job_id and stop["cause"] == cause)


def export_distributed_env() -> None:
    """RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK from the scheduler's environment.

    Every rank keeps seeing all GPUs of its node (the training engine selects
    ``cuda:LOCAL_RANK``); the scheduler's values replace any inherited from the
    submitting shell.
    """
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if os.environ["WORLD_SIZE"] == "1":
        # submitit derives the port from the job id, so that every rank agrees on it
        # without talking; a job alone needs no agreement, and a port the kernel hands
        # out cannot already be taken by another job's rendezvous or a client socket
        # on a shared node.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(sock.getsockname()[1])


class CellJob(submitit.helpers.Checkpointable):
    """One cell's stage as a submitit job; requeued jobs call it again and resume."""

    def __init__(self, cell: str, config: dict, time_limit_min: int, signal_delay_s: int, requeue_limit: int):
        self.cell = cell
        self.config = config
        self.time_limit_min = time_limit_min
        self.signal_delay_s = signal_delay_s
        self.requeue_limit = requeue_limit

    def __call__(self) -> dict:
        request = install_stop_request()
        started = time.time()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        env = submitit.JobEnvironment()
        export_distributed_env()
        cfg = config_from_dict(self.config, source=f"cell {self.cell}")
        if env.global_rank == 0:
            record_start(cfg.train.run_dir, env.job_id, env.num_tasks)
        logger.info("cell %s: %s stage, rank %d of %d, job %s", self.cell, cfg.stage, env.global_rank,
                    env.num_tasks, env.job_id)
        from avbert.train import run_stage

        outcome = run_stage(cfg, should_checkpoint_and_exit=request.is_set)
        summary = {"cell": self.cell, "status": outcome.status, "step": outcome.step,
                   "total_steps": outcome.total_steps, "run_dir": outcome.run_dir}
        if outcome.status != "completed":
            self._after_stop(request, env, started, outcome.step, outcome.total_steps, cfg.train.run_dir)
        ignore_time_limit_signals()
        return summary

    def _after_stop(self, request: StopRequest, env, started: float, step: int, total: int, run_dir: str) -> None:
        """The checkpoint is saved: requeue after the time-limit signal, else stop."""
        if request.terminated or not request.warned:
            if env.global_rank == 0:
                record_stop(run_dir, env.job_id, "terminated", step)
            raise StageInterrupted(
                f"{self.cell} saved its checkpoint at step {step}/{total} and stopped on "
                f"{'+'.join(request.received)}; Slurm restarts a preempted or requeued job by itself, "
                "otherwise launch again to resume")
        if env.global_rank != 0:
            return  # rank 0 requeues the whole job
        timed_out = is_time_limit(started, request.first_at or time.time(), self.time_limit_min, self.signal_delay_s)
        cause = "time_limit" if timed_out else "preemption_notice"
        count = record_stop(run_dir, env.job_id, cause, step)
        if timed_out and count > self.requeue_limit:
            raise StageInterrupted(f"{self.cell} reached its time limit {count} times (requeue_limit "
                                   f"{self.requeue_limit}); stopped at step {step}/{total} with a checkpoint")
        logger.info("cell %s: checkpointed at step %d/%d after %s; requeueing job %s", self.cell, step, total,
                    cause.replace("_", " "), env.job_id)
        requeue(env, self.requeue_limit - count if timed_out else self.requeue_limit)
        sys.exit(REQUEUE_EXIT)

    def __repr__(self) -> str:
        return f"CellJob({self.cell})"
