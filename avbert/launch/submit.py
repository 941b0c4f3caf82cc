"""Submission through submitit: Slurm jobs, or cells run one by one on this machine.

Slurm: one task per GPU (``--ntasks-per-node`` = GPUs per node; the profile's
``tasks_per_node`` on CPU-only nodes), as many nodes as the stage asks. The
job gets ``--signal=USR1@<signal_delay_s>`` (the time-limit warning the
training loop checkpoints on), ``--requeue`` and the profile's setup lines,
then works in the launch's code snapshot (its directory and ``PYTHONPATH``). Cells of one stage
with the same resources and nothing to wait for go out as one job array
(``executor.batch()``, named ``experiment:[v1,v2]:stage``); cells that wait for
a queued pretraining job get ``--dependency=afterok:<id>`` and
``--kill-on-invalid-dep=yes``, one job per cell when each waits for its own
variant's pretraining (``experiment:variant:stage``), an array when several
stages wait for the same one.

Local: submitit's ``LocalExecutor`` runs each cell in turn with the same job
code, time limit and signal, and the launcher waits for it.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from avbert.config import dump_yaml, to_dict
from avbert.launch.job import CellJob
from avbert.launch.actions import PlannedCell
from avbert.launch.profile import Profile
from avbert.launch.grid import Cell
from avbert.launch.resources import Resources

TIME_LIMIT_SIGNAL = "USR1"
MAX_ARRAY_NAME = 80


@dataclass
class Submitted:
    """A cell's job as the scheduler knows it."""

    cell: Cell
    job_id: str
    job_name: str
    log: str


def mem_text(gb: float) -> str:
    """``--mem`` as Slurm reads it: whole GB, else MB rounded up. Never ``0MB``, which
    Slurm reads as all of the node's memory."""
    return f"{int(gb)}GB" if float(gb).is_integer() else f"{max(1, math.ceil(gb * 1024))}MB"


def code_setup(code_dir: Path) -> list[str]:
    """Shell lines that make the job import the launch's code snapshot.

    ``python -m`` puts the working directory first on ``sys.path``, so the job
    works in the snapshot: launched from the repository, it would otherwise
    import the working tree.
    """
    quoted = shlex.quote(str(code_dir))
    return [f"cd {quoted}", f"export PYTHONPATH={quoted}${{PYTHONPATH:+:$PYTHONPATH}}"]


def slurm_parameters(res: Resources, profile: Profile, job_name: str, code_dir: Path,
                     dependency: Optional[str] = None) -> dict:
    """SlurmExecutor parameters (sbatch options) of one job."""
    extra = dict(profile.additional_parameters)
    extra.update(signal=f"{TIME_LIMIT_SIGNAL}@{res.signal_delay_s}", requeue=True)
    if dependency:
        extra["kill-on-invalid-dep"] = "yes"  # a dependent of a failed job is cancelled, not left pending
    params: dict = {
        "job_name": job_name, "time": res.time_limit_min, "nodes": res.nodes, "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task, "mem": mem_text(res.mem_per_task_gb * res.tasks_per_node),
        "signal_delay_s": res.signal_delay_s, "stderr_to_stdout": True,
        "setup": [*profile.setup, *code_setup(code_dir)], "additional_parameters": extra,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if dependency:
        params["dependency"] = dependency
    return params


def make_job(cell: Cell) -> CellJob:
    res = cell.resources
    return CellJob(cell.name, to_dict(cell.config), res.time_limit_min, res.signal_delay_s, res.requeue_limit)


def prepare_run_dir(cell: Cell) -> None:
    """The run directory with the config it is about to run."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cell.config, cell.run_dir / "config.yaml")


def _names(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else f"[{','.join(unique)}]"


def array_name(cells: list[Cell]) -> str:
    """``experiment:[v1,v2]:stage`` (or ``experiment:variant:[s1,s2]``); lists too long become counts."""
    experiment = cells[0].experiment
    variants, stages = [c.variant for c in cells], [c.stage for c in cells]
    name = f"{experiment}:{_names(variants)}:{_names(stages)}"
    if len(name) <= MAX_ARRAY_NAME:
        return name
    short = {noun: (values[0] if len(set(values)) == 1 else f"[{len(set(values))} {noun}]")
             for noun, values in (("variants", variants), ("stages", stages))}
    return f"{experiment}:{short['variants']}:{short['stages']}"


def slurm_groups(plan: list[PlannedCell]) -> list[list[PlannedCell]]:
    """Submission units: cells with the same resources that wait for the same cell (or none) form
    one array; those that wait for nothing go first, so the ids the others wait for exist."""
    groups: dict[tuple, list[PlannedCell]] = {}
    for planned in sorted((p for p in plan if p.submit), key=lambda p: p.wait_for is not None):
        groups.setdefault((planned.cell.resources, planned.wait_for), []).append(planned)
    return list(groups.values())


def submit_slurm(plan: list[PlannedCell], profile: Profile, folder: Path, code_dir: Path,
                 live_jobs: dict[str, str], on_submit: Callable[[Submitted], None]) -> list[Submitted]:
    """Submit every planned cell to Slurm; ``live_jobs`` maps queued upstream cells to their job ids."""
    from submitit import SlurmExecutor

    job_ids = dict(live_jobs)
    done: list[Submitted] = []
    for group in slurm_groups(plan):
        cells = [p.cell for p in group]
        wait_for = group[0].wait_for
        dependency = f"afterok:{job_ids[wait_for]}" if wait_for else None
        name = cells[0].job_name if len(cells) == 1 else array_name(cells)
        executor = SlurmExecutor(folder=folder, max_num_timeout=profile.requeue_limit)
        executor.update_parameters(**slurm_parameters(cells[0].resources, profile, name, code_dir, dependency))
        for cell in cells:
            prepare_run_dir(cell)
        with executor.batch():
            jobs = [executor.submit(make_job(cell)) for cell in cells]
        for cell, job in zip(cells, jobs):
            job_ids[cell.name] = job.job_id
            submitted = Submitted(cell, job.job_id, name, str(job.paths.stdout))
            done.append(submitted)
            on_submit(submitted)
    return done


def local_executor(res: Resources, profile: Profile, folder: Path, code_dir: Path):
    from submitit import LocalExecutor

    executor = LocalExecutor(folder=folder, max_num_timeout=profile.requeue_limit)
    executor.update_parameters(timeout_min=res.time_limit_min, tasks_per_node=res.tasks_per_node,
                               gpus_per_node=res.gpus_per_node, signal_delay_s=res.signal_delay_s,
                               stderr_to_stdout=True, setup=[*profile.setup, *code_setup(code_dir)])
    return executor


def start_local(planned: PlannedCell, profile: Profile, folder: Path, code_dir: Path,
                on_submit: Callable[[Submitted], None]):
    """Start one cell on this machine (submitit's local executor); returns its job."""
    cell = planned.cell
    prepare_run_dir(cell)
    job = local_executor(cell.resources, profile, folder, code_dir).submit(make_job(cell))
    on_submit(Submitted(cell, job.job_id, cell.job_name, str(job.paths.stdout)))
    return job


def local_error(job) -> Optional[str]:
    """None when a finished local job succeeded, else its error's last line."""
    try:
        job.result()
    except Exception as err:  # the job's traceback, re-raised by submitit
        lines = [line for line in str(err).splitlines() if line.strip()]
        return lines[-1] if lines else type(err).__name__
    return None


def local_slots(profile: Profile, cores: Optional[int] = None) -> int:
    """How many cells run side by side on this machine: its usable cores over the cores
    one job takes (``cpus_per_task`` x ``tasks_per_node`` of the profile), at least one.
    A cell that asks for GPUs runs alone (``launcher``): the local executor does not
    share GPUs out."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    per_job = max(1, (profile.cpus_per_task or 1) * max(1, profile.tasks_per_node))
    return max(1, cores // per_job)
