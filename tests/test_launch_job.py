"""Inside the job: stop requests, checkpoint-then-requeue, and real cells on submitit's LocalExecutor."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from avbert.launch.job import CellJob, StageInterrupted, export_distributed_env, read_journal, rendezvous_port
from avbert.launch.preemption import StopRequest, install_stop_request, is_time_limit
from avbert.launch.profile import load_profile
from avbert.launch.grid import expand
from avbert.launch.spec import read_experiment
from avbert.launch.submit import local_executor, make_job, prepare_run_dir

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "slurm" / "profiles" / "local.yaml"

TWIN_EXPERIMENT = """
name: twins
default_scale: tiny
base: {model: {fusion: mid}}
grid: {variants: {reference: {}, interrupted: {}}}
stages: {pretrain: {kind: pretrain}}
scales:
  tiny:
    config:
      model: {preset: tiny}
      data: {preset: tiny, source: synthetic, batch_size: 8, synthetic: {num_videos: 64}}
      train: {precision: fp32, device: cpu, steps: STEPS, log_every: 1, checkpoint_every: 1000}
      optim: {lr: 0.001, warmup_steps: 5}
    stages:
      pretrain: {resources: {nodes: 1, time_limit_min: 10}}
"""


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signals_only_raise_the_flag(restore_signals):
    request = install_stop_request()
    assert not request.is_set()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert request.is_set() and request.warned and not request.terminated
    os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
    assert request.terminated and request.received == ["SIGUSR1", "SIGTERM"]


def test_time_limit_signal_is_told_apart_from_a_preemption_notice():
    assert is_time_limit(0.0, 55.0, time_limit_min=2, signal_delay_s=60)
    assert is_time_limit(0.0, 72 * 3600 - 150, time_limit_min=72 * 60, signal_delay_s=120)
    assert not is_time_limit(0.0, 3600, time_limit_min=72 * 60, signal_delay_s=120)


class FakeEnv:
    """The few JobEnvironment members the job uses after a stop."""

    def __init__(self, rank: int = 0):
        self.global_rank, self.job_id, self.requeued = rank, "77", []

    def _requeue(self, countdown: int) -> None:
        self.requeued.append(countdown)


def test_the_private_submitit_requeue_call_is_still_there():
    """``avbert.launch.job.requeue`` calls submitit's private ``JobEnvironment._requeue(countdown)``,
    and submitit's Slurm environment implements it: a submitit upgrade that drops or renames it
    fails here, not in a preempted job on a cluster."""
    import inspect

    import submitit
    from submitit.slurm.slurm import SlurmJobEnvironment

    for cls in (submitit.JobEnvironment, SlurmJobEnvironment):
        assert list(inspect.signature(cls._requeue).parameters) == ["self", "countdown"], cls
    assert SlurmJobEnvironment._requeue is not submitit.JobEnvironment._requeue  # implemented, not the stub


def stop(job: CellJob, received: list[str], env: FakeEnv, run_dir: Path, started: float) -> None:
    request = StopRequest(received=list(received), first_at=time.time())
    job._after_stop(request, env, started, 5, 10, str(run_dir))


def test_time_limit_requeues_until_the_limit(tmp_path):
    job, env = CellJob("e/v/pretrain", {}, time_limit_min=2, signal_delay_s=60, requeue_limit=1), FakeEnv()
    with pytest.raises(SystemExit):
        stop(job, ["SIGUSR1"], env, tmp_path, time.time() - 60)
    assert env.requeued == [0]
    with pytest.raises(StageInterrupted, match="time limit 2 times"):
        stop(job, ["SIGUSR1"], env, tmp_path, time.time() - 60)
    assert env.requeued == [0]
    assert [s["cause"] for s in read_journal(tmp_path)["stops"]] == ["time_limit", "time_limit"]


def test_preemption_notice_requeues_without_counting(tmp_path):
    job, env = CellJob("e/v/pretrain", {}, time_limit_min=600, signal_delay_s=120, requeue_limit=1), FakeEnv()
    for _ in range(3):
        with pytest.raises(SystemExit):
            stop(job, ["SIGUSR2"], env, tmp_path, time.time())
    assert env.requeued == [1, 1, 1]


def test_termination_saves_and_stops_and_only_rank_zero_requeues(tmp_path):
    job = CellJob("e/v/pretrain", {}, time_limit_min=2, signal_delay_s=60, requeue_limit=3)
    env = FakeEnv()
    with pytest.raises(StageInterrupted, match="SIGUSR1\\+SIGTERM"):
        stop(job, ["SIGUSR1", "SIGTERM"], env, tmp_path, time.time())
    assert env.requeued == [] and read_journal(tmp_path)["stops"][0]["cause"] == "terminated"
    other = FakeEnv(rank=1)
    stop(job, ["SIGUSR1"], other, tmp_path, time.time())
    assert other.requeued == []


# -- real cells on submitit's LocalExecutor ---------------------------------------------------------------------------
def twin_cells(tmp_path: Path, steps: int):
    path = tmp_path / "twins.yaml"
    path.write_text(TWIN_EXPERIMENT.replace("STEPS", str(steps)))
    return expand(read_experiment(path), "tiny", load_profile(LOCAL), tmp_path / "runs")


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


def wait_for_step(run_dir: Path, step: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("step", 0) >= step:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} did not reach step {step} in {timeout_s}s")


def finished(job, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            raise AssertionError(f"job {job.job_id} still running after {timeout_s}s")
        time.sleep(0.5)
    return job.result()


@pytest.mark.slow
def test_fast_forwarded_preemption_resumes_with_identical_losses(tmp_path):
    """The warning signal sent early to the task: checkpoint, exit 144, restart by the controller, resume."""
    profile = load_profile(LOCAL)
    reference, interrupted = twin_cells(tmp_path, steps=40)
    jobs = []
    for cell in (reference, interrupted):
        prepare_run_dir(cell)
        jobs.append(local_executor(cell.resources, profile, tmp_path / "logs", REPO).submit(make_job(cell)))
    wait_for_step(interrupted.run_dir, 12, timeout_s=300)
    task_pid = read_journal(interrupted.run_dir)["starts"][0]["pid"]
    os.kill(task_pid, signal.SIGUSR1)
    for job in jobs:
        assert finished(job, timeout_s=600)["status"] == "completed"
    journal = read_journal(interrupted.run_dir)
    assert len(journal["starts"]) == 2 and journal["stops"][0]["cause"] == "preemption_notice"
    assert 12 <= journal["stops"][0]["step"] < 40
    expected = losses(reference.run_dir)
    assert sorted(expected) == list(range(1, 41))
    assert losses(interrupted.run_dir) == expected
    assert (interrupted.run_dir / "export" / "model.pt").is_file()


@pytest.mark.parametrize("tasks", [1, 2])
def test_a_single_task_job_rendezvouses_on_a_port_nothing_holds(monkeypatch, tasks):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "5", "SLURM_NTASKS": str(tasks), "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
             "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS_PER_NODE": str(tasks)}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)  # the export sets them; undone after the test
    job_port = rendezvous_port("5")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", job_port))
        taken.listen()
        export_distributed_env()
        port = int(os.environ["MASTER_PORT"])
        if tasks == 1:
            assert port != job_port
            with socket.socket() as store:
                store.bind(("127.0.0.1", port))  # free for the rendezvous
        else:
            assert port == job_port  # several ranks must agree without talking: the job id decides
    assert os.environ["WORLD_SIZE"] == str(tasks)


def test_lost_runs_are_restarts_that_recorded_no_stop():
    from avbert.launch.job import LOST_RUNS_LIMIT, lost_runs

    journal = {"stops": [{"job_id": "5", "cause": "terminated"}, {"job_id": "4", "cause": "terminated"},
                         {"job_id": "5", "cause": LOST_RUNS_LIMIT}]}
    assert lost_runs(journal, "5", restart_count=3) == 2  # 3 restarts, 1 recorded its stop
    assert lost_runs(journal, "5", restart_count=1) == 0
    assert lost_runs({"stops": []}, "5", restart_count=0) == 0


def test_the_rendezvous_port_ignores_the_submitting_shells_and_avoids_ephemeral_ports(monkeypatch):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "41_3", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS_PER_NODE": "1",
             "MASTER_PORT": "29500", "MASTER_ADDR": "somewhere"}  # exported in the shell that ran sbatch
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    export_distributed_env()
    assert os.environ["MASTER_PORT"] == str(rendezvous_port("41_3")) != "29500"
    assert os.environ["MASTER_ADDR"] == "node1" and os.environ["RANK"] == "1"
    assert all(20000 <= rendezvous_port(str(job)) < 32768 for job in range(500))
