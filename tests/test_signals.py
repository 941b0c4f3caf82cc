"""Signals as clusters send them, on the single-node local cluster (slurm/local-cluster/start.sh).

Each test runs one cell twice side by side: uninterrupted on submitit's local executor (the
reference) and on Slurm, stopped mid-run the way a cluster stops it; the Slurm job must be
requeued, resume from the checkpoint it saved when it was stopped, and log the reference's
per-step losses exactly.

- The time-limit warning (``--signal=USR1@signal_delay_s``, submitit's timeout path) is covered
  by ``tests/test_launch_slurm.py::test_requeue_and_time_limit_resume_with_the_losses_of_an_uninterrupted_run``
  (a 2-minute limit, several warnings, requeue and exact resume); it is not repeated here.
- A bare SIGTERM with no warning first (``scancel --signal=TERM``: the job stays RUNNING in
  Slurm, so nobody but the job itself can requeue it): the job saves, requeues itself
  (``avbert.launch.job``: cause ``sigterm`` in ``job.json``) and resumes.
- Preemption by Slurm (``PreemptType=preempt/qos``, ``PreemptMode=REQUEUE``): a job of a higher
  QOS takes the node, the cell's job goes ``PREEMPTED`` (SIGTERM, then requeued by Slurm), and
  resumes. The test turns preemption on for its own duration (two lines appended to the
  generated slurm.conf, ``scontrol reconfigure``, a QOS ``avbert-urgent`` that preempts
  ``normal``) and restores the configuration afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch_slurm import (LAUNCH, job_ids, launch, losses, pretrain_experiment, read_index, run, wait_step,
                               wait_terminal)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 60
STOP_AT = 15  # the signal comes after this step, between two periodic checkpoints
EXPERIMENT = pretrain_experiment("signals", STEPS, 20)
CELL = "signals/xl-part/pretrain"
CELL_DIR = Path("signals") / "xl-part" / "pretrain"
URGENT_QOS = "avbert-urgent"
PREEMPTION_LINES = ["PreemptType=preempt/qos", "PreemptMode=REQUEUE"]
CONF_MARKER = "# avbert-suite slurm/local-cluster: generated file"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    ping = run("scontrol", "ping")
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}); "
                    "start it with slurm/local-cluster/start.sh")


def wait_gone(job_id: str, timeout_s: float) -> str:
    """The job's final sacct state, once squeue no longer lists it. sacct alone will not do: it shows
    a preempted job as PREEMPTED while Slurm has already queued it again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = run("squeue", "-h", "-j", job_id, "-o", "%T")
        if queued.returncode == 0 and not queued.stdout.strip():
            return wait_terminal([job_id], timeout_s=60)[job_id]
        time.sleep(2)
    pytest.fail(f"job {job_id} still queued after {timeout_s}s")


class Interrupted:
    """The reference run (local executor, in the background) and the cell's Slurm job."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        experiment = tmp_path / "signals.yaml"
        experiment.write_text(EXPERIMENT)
        self.reference = subprocess.Popen([sys.executable, str(LAUNCH), str(experiment), "--cluster", "local",
                                           "--runs-dir", str(tmp_path / "reference")],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        launched = launch(str(experiment), "--cluster", "slurm", "--runs-dir", str(tmp_path / "slurm"), cwd=tmp_path)
        assert launched.returncode == 0, launched.stdout + launched.stderr
        self.job_id = job_ids(read_index(tmp_path / "slurm", "signals"))[CELL]
        self.run_dir = tmp_path / "slurm" / CELL_DIR

    def finish(self) -> str:
        """Wait for both; the Slurm job's final state."""
        state = wait_gone(self.job_id, timeout_s=600)
        out, _ = self.reference.communicate(timeout=600)
        assert self.reference.returncode == 0, out
        return state

    def close(self) -> None:
        if self.reference.poll() is None:
            self.reference.kill()
        run("scancel", self.job_id)

    def assert_exact_resume(self, cause: str) -> dict:
        """Losses equal to the reference's; the first stop has ``cause`` and the next start resumed
        from the step of that stop (nothing past the save is lost). Returns the journal."""
        expected = losses(self.tmp_path / "reference" / CELL_DIR)
        assert sorted(expected) == list(range(1, STEPS + 1))
        assert losses(self.run_dir) == expected
        journal = json.loads((self.run_dir / "job.json").read_text())
        assert len(journal["starts"]) >= 2 and journal["stops"][0]["cause"] == cause, journal
        stopped_at = journal["stops"][0]["step"]
        assert STOP_AT <= stopped_at < STEPS, journal
        logs = "".join(path.read_text(errors="replace")
                       for path in (self.tmp_path / "slurm" / "signals" / "logs").glob(f"{self.job_id}_*"))
        assert f"resumed from step {stopped_at} of {STEPS}" in logs, logs[-4000:]
        return journal


def test_bare_sigterm_without_warning_requeues_and_resumes_exactly(tmp_path):
    job = Interrupted(tmp_path)
    try:
        wait_step(job.run_dir, STOP_AT, timeout_s=300)
        signalled = run("scancel", "--signal=TERM", job.job_id)
        assert signalled.returncode == 0, signalled.stderr
        assert job.finish() == "COMPLETED"
    finally:
        job.close()
    journal = job.assert_exact_resume("sigterm")
    assert [stop["cause"] for stop in journal["stops"]] == ["sigterm"], journal


def _generated_confs() -> list[Path]:
    """The slurm.conf files start.sh wrote: the daemons' copy in the base directory and /etc/slurm's."""
    etc = Path("/etc/slurm/slurm.conf")
    if not etc.is_file() or CONF_MARKER not in etc.read_text().splitlines():
        pytest.skip("/etc/slurm/slurm.conf was not written by slurm/local-cluster/start.sh; "
                    "preemption is only turned on in the local cluster's own configuration")
    found = re.search(r"^SlurmctldPidFile=(.+)/run/slurmctld\.pid$", etc.read_text(), re.M)
    assert found, f"no SlurmctldPidFile in {etc}"
    return [Path(found.group(1)) / "etc" / "slurm.conf", etc]


@pytest.fixture
def preemption():
    """QOS preemption with PreemptMode=REQUEUE for the test's duration; the QOS name to submit with."""
    confs = _generated_confs()
    saved = {conf: conf.read_text() for conf in confs}
    try:
        for conf, text in saved.items():
            conf.write_text(text + "".join(f"{line}\n" for line in PREEMPTION_LINES))
        assert run("scontrol", "reconfigure").returncode == 0
        assert "preempt/qos" in run("scontrol", "show", "config").stdout
        if URGENT_QOS not in run("sacctmgr", "-n", "-P", "show", "qos", "format=name").stdout.split():
            added = run("sacctmgr", "-i", "add", "qos", URGENT_QOS, "Preempt=normal")
            assert added.returncode == 0, added.stdout + added.stderr
        allowed = run("sacctmgr", "-i", "modify", "user", "root", "set", f"qos+={URGENT_QOS}")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        yield URGENT_QOS
    finally:
        for conf, text in saved.items():
            conf.write_text(text)
        run("scontrol", "reconfigure")
        run("sacctmgr", "-i", "modify", "user", "root", "set", f"qos-={URGENT_QOS}")
        run("sacctmgr", "-i", "delete", "qos", URGENT_QOS)


def _states_seen(job_id: str) -> set[str]:
    """Every state sacct has recorded for the job, its earlier (requeued) runs included."""
    lines = run("sacct", "-X", "-n", "-P", "-D", "-o", "State", "-j", job_id).stdout.split()
    return {line.split()[0] for line in lines if line}


def test_preempted_by_a_higher_qos_is_requeued_by_slurm_and_resumes_exactly(tmp_path, preemption):
    cpus = run("sinfo", "-h", "-o", "%c").stdout.split()[0]
    job = Interrupted(tmp_path)
    urgent = None
    try:
        wait_step(job.run_dir, STOP_AT, timeout_s=300)
        # The whole node, so the cell's job must make room.
        submitted = run("sbatch", "--parsable", f"--qos={preemption}", "-p", "local", "-c", cpus, "--mem=100M",
                        "-o", "/dev/null", "--wrap", "sleep 5")
        assert submitted.returncode == 0, submitted.stderr
        urgent = submitted.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 60
        while "PREEMPTED" not in _states_seen(job.job_id):
            assert time.monotonic() < deadline, f"job {job.job_id} not preempted: {_states_seen(job.job_id)}"
            time.sleep(1)
        assert job.finish() == "COMPLETED"
        assert wait_terminal([urgent], timeout_s=60)[urgent] == "COMPLETED"
    finally:
        job.close()
        if urgent:
            run("scancel", urgent)
    # Slurm ended the job itself (state COMPLETING, not RUNNING, when the SIGTERM came): the job
    # only saved and stopped, and Slurm requeued it.
    journal = job.assert_exact_resume("terminated")
    assert {"PREEMPTED", "COMPLETED"} <= _states_seen(job.job_id), _states_seen(job.job_id)
    assert journal["starts"][1]["slurm_restart_count"] >= 1, journal
