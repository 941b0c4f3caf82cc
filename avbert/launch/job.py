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
- a SIGTERM while Slurm still reports the job ``RUNNING`` was not sent by
  Slurm ending the job (``scancel --signal=TERM``, a site's preemption
  script, an operator's ``kill``): nobody else will requeue it, so rank 0
  requeues it as after a preemption notice (not counted against
  ``requeue_limit``), with the cause ``sigterm`` in ``job.json``.

Runs lost without a stop. A run that ends without recording a stop (its node
failed, or it was killed outright) resumes from the newest complete
checkpoint when Slurm requeues the job (``--requeue``: Slurm requeues a
batch job whose node fails). Each start counts such runs of its job id: the
runs Slurm restarted (``restart_count``) less the stops recorded in
``job.json``. Past the profile's ``requeue_limit`` every task fails at once
(before any rendezvous), naming the nodes that went down meanwhile (from
Slurm's node events, or the nodes whose slurmd restarted), and the message
goes into ``job.json`` for ``tools/status.py``.

``job.json`` in the run directory records every start (job id, host, code
directory) and every stop, for ``tools/status.py``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
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
LOST_RUNS_LIMIT = "lost_runs_limit"  # the journal's stop cause when too many runs were lost

logger = logging.getLogger("avbert.launch")


def requeue(env, countdown: int) -> None:
    """Put this job back in the queue (``scontrol requeue`` on Slurm), ``countdown`` the
    requeues it has left. submitit has no public call for this: its own checkpointing
    (``Checkpointable``) requeues from its signal handler, while the suite handles the
    signals itself (``avbert.launch.preemption``). The private ``JobEnvironment._requeue``
    is used here alone; tests/test_launch_job.py fails on a submitit whose
    ``JobEnvironment`` lacks it or changed its signature."""
    env._requeue(countdown)


def slurm_job_state(job_id: str) -> str | None:
    """The state ``squeue`` reports for this job (``RUNNING``, ``COMPLETING``, ...), or None outside a
    Slurm job or when ``squeue`` does not answer. While Slurm itself ends a job (``scancel``,
    ``scontrol requeue``, preemption, time limit) the state has left ``RUNNING`` before the
    job's processes are signalled."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    return lines[0] if result.returncode == 0 and len(lines) == 1 else None


class StageInterrupted(RuntimeError):
    """The stage saved a checkpoint and stopped before its last step."""


class LostRunsLimit(RuntimeError):
    """The job lost more runs without a stop (node failures) than its requeue limit allows."""


def lost_runs(journal: dict, job_id: str, restart_count: int) -> int:
    """Earlier runs of job ``job_id`` that ended without recording a stop: each run records at most
    one, and ``restart_count`` (Slurm's count of restarts, ``restart_count()``) counts the earlier runs.
    A ``lost_runs_limit`` stop is not one of them: rank 0 of the current run may already have written
    it while the other ranks read the journal."""
    stops = sum(1 for stop in journal.get("stops", [])
                if stop.get("job_id") == job_id and stop.get("cause") != LOST_RUNS_LIMIT)
    return max(restart_count - stops, 0)


def _slurm_lines(*cmd: str) -> list[str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.splitlines() if result.returncode == 0 else []


def restart_count(job_id: str) -> int:
    """How many times Slurm has restarted this job: ``SLURM_RESTART_COUNT`` (set in the batch step, not
    always passed on to the tasks on other nodes) or slurmctld's ``Restarts``, whichever is larger;
    0 outside Slurm."""
    count = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if os.environ.get("SLURM_JOB_ID"):
        for line in _slurm_lines("scontrol", "show", "job", "-o", job_id):
            found = [item.split("=", 1)[1] for item in line.split() if item.startswith("Restarts=")]
            if found and found[0].isdigit():
                count = max(count, int(found[0]))
    return count


def _slurm_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def failed_nodes(job_id: str, node_lists: list[str], since: float) -> list[str]:
    """The nodes of ``node_lists`` (the job's earlier runs) that failed since ``since``, as
    ``node (how we know)``: Slurm's node events (``sacctmgr show event``: DOWN/FAIL/DRAIN with
    the reason) where the accounting daemon answers, else the nodes whose ``slurmd`` or machine
    started again since then (``scontrol show node``: ``SlurmdStartTime``, ``BootTime``), which
    slurmctld alone answers."""
    nodes: list[str] = []
    for node_list in node_lists:
        for node in _slurm_lines("scontrol", "show", "hostnames", node_list) or [node_list]:
            if node not in nodes:
                nodes.append(node)
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
    found = []
    for line in _slurm_lines("sacctmgr", "-n", "-P", "show", "event", f"start={start}",
                             "format=NodeName,State,Reason"):
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if node in nodes and any(word in state.upper() for word in ("DOWN", "FAIL", "DRAIN")):
            entry = f"{node} ({state.lower()}: {reason})" if reason else f"{node} ({state.lower()})"
            if entry not in found:
                found.append(entry)
    if found:
        return found
    for line in _slurm_lines("scontrol", "show", "node", "-o", ",".join(nodes)) if nodes else []:
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        for key, what in (("BootTime", "rebooted"), ("SlurmdStartTime", "slurmd restarted")):
            started = _slurm_time(fields.get(key, ""))
            if fields.get("NodeName") in nodes and started is not None and started > since:
                found.append(f"{fields['NodeName']} ({what} at {fields[key]})")
                break
    return found


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
                              "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                              "nodes": os.environ.get("SLURM_JOB_NODELIST")})
    _write_journal(run_dir, journal)


def record_stop(run_dir: str | Path, job_id: str, cause: str, step: int) -> int:
    """Add a stop; return how many stops of this cause the job (this job id) has had."""
    journal = read_journal(run_dir)
    journal["stops"].append({"time": time.time(), "job_id": job_id, "cause": cause, "step": step})
    _write_journal(run_dir, journal)
    return sum(1 for stop in journal["stops"] if stop["job_id"] == job_id and stop["cause"] == cause)


EPHEMERAL_PORTS_START = 32768  # Linux's default ip_local_port_range starts here
RENDEZVOUS_PORTS_START = 20000


def rendezvous_port(job_id: str) -> int:
    """The rendezvous port of a multi-rank job: a function of the job id, so that every rank
    agrees on it without talking, and below the ports the kernel hands out to client sockets,
    so that no connection of another job on the node can hold it."""
    return RENDEZVOUS_PORTS_START + random.Random(job_id).randrange(EPHEMERAL_PORTS_START - RENDEZVOUS_PORTS_START)


def export_distributed_env() -> None:
    """RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK from the scheduler's environment.

    Every rank keeps seeing all GPUs of its node (the training engine selects
    ``cuda:LOCAL_RANK``); the scheduler's values replace any inherited from the
    submitting shell. The rendezvous is the first node of the job's node list at
    ``rendezvous_port``: a ``MASTER_PORT`` the submitting shell exported (sbatch passes the
    environment on) would put every job of a launch on one port.
    """
    os.environ["MASTER_PORT"] = str(rendezvous_port(submitit.JobEnvironment().job_id))
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if os.environ["WORLD_SIZE"] == "1":
        # A job alone needs no agreement: a port the kernel hands out cannot already be
        # taken by another job's rendezvous or a client socket on a shared node.
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
        journal = read_journal(cfg.train.run_dir)  # before rank 0 adds this start
        if env.global_rank == 0:
            record_start(cfg.train.run_dir, env.job_id, env.num_tasks)
        self._check_lost_runs(journal, env, cfg.train.run_dir)
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

    def _check_lost_runs(self, journal: dict, env, run_dir: str) -> None:
        """Fail every task, before any rendezvous, once more runs than ``requeue_limit`` were lost."""
        lost = lost_runs(journal, env.job_id, restart_count(env.job_id))
        if lost <= self.requeue_limit:
            if lost:
                logger.info("cell %s: job %s lost %d run(s) without a stop (requeue_limit %d); resuming from the "
                            "newest complete checkpoint", self.cell, env.job_id, lost, self.requeue_limit)
            return
        starts = [start for start in journal.get("starts", []) if start.get("job_id") == env.job_id]
        node_lists = [start["nodes"] for start in starts if start.get("nodes")]
        nodes = failed_nodes(env.job_id, node_lists or [os.environ.get("SLURM_JOB_NODELIST", "")],
                             min((start["time"] for start in starts), default=time.time() - 86400))
        message = (f"job {env.job_id} lost {lost} runs without saving (node failure or kill), more than its "
                   f"requeue_limit {self.requeue_limit}; nodes: {', '.join(nodes) or 'not recorded by Slurm'}; "
                   "launch again to resume from the newest complete checkpoint")
        if env.global_rank == 0:
            latest = read_journal(run_dir)
            latest["stops"].append({"time": time.time(), "job_id": env.job_id, "cause": LOST_RUNS_LIMIT,
                                    "step": None, "message": message})
            _write_journal(run_dir, latest)
        raise LostRunsLimit(f"{self.cell}: {message}")

    def _after_stop(self, request: StopRequest, env, started: float, step: int, total: int, run_dir: str) -> None:
        """The checkpoint is saved: requeue after the time-limit signal or a SIGTERM that Slurm did
        not send itself, else stop."""
        if request.terminated and not request.warned and slurm_job_state(env.job_id) == "RUNNING":
            if env.global_rank != 0:
                return  # rank 0 requeues the whole job
            record_stop(run_dir, env.job_id, "sigterm", step)
            logger.info("cell %s: checkpointed at step %d/%d after a SIGTERM while Slurm still runs the job; "
                        "requeueing job %s", self.cell, step, total, env.job_id)
            requeue(env, self.requeue_limit)
            sys.exit(REQUEUE_EXIT)
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
