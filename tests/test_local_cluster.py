"""Tests against the real single-node Slurm cluster on localhost.

Start it first with ``slurm/local-cluster/start.sh`` (it stays up; ``stop.sh`` stops it).
The tests are skipped only when ``sbatch`` is not on PATH; if sbatch exists but the cluster
is down they fail, with a message saying how to start it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_PROFILE = REPO / "slurm" / "profiles" / "local.yaml"
START_HINT = "start it with slurm/local-cluster/start.sh"
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sbatch") is None,
        reason="sbatch is not on PATH (no Slurm client): slurm/local-cluster/start.sh installs and starts one",
    ),
]


def _run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> None:
    """Fail fast, with a clear message, if the controller or accounting is not answering."""
    ping = _run("scontrol", "ping")
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}); {START_HINT}")
    acct = _run("sacct", "-n", "-X", "-S", "now-1hour", "-o", "JobID")
    if acct.returncode != 0:
        pytest.fail(f"sacct does not answer ({acct.stderr.strip()}); {START_HINT}")


def _sacct_state(job_id: str) -> str:
    out = _run("sacct", "-j", job_id, "-n", "-o", "State", "-X").stdout.split()
    # "CANCELLED by 0" -> "CANCELLED"; empty until slurmctld has told slurmdbd about the job.
    return out[0] if out else ""


def _wait_terminal_state(job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = _sacct_state(job_id)
        if state in TERMINAL_STATES:
            return state
        time.sleep(0.5)
    _run("scancel", job_id)
    pytest.fail(f"job {job_id} not finished after {timeout_s}s (last sacct state: {state!r})")


def test_sbatch_wrap_completes_and_sacct_reports_it(cluster: None, tmp_path: Path) -> None:
    out_file = tmp_path / "slurm-%j.out"
    sub = _run(
        "sbatch", "--parsable", "--job-name=avbert-test-wrap", "--time=2", "--mem=100M",
        f"--output={out_file}", "--wrap", "echo hello-from-slurm on $(hostname -s)",
    )  # fmt: skip
    assert sub.returncode == 0, f"sbatch failed: {sub.stderr}"
    job_id = sub.stdout.strip().split(";")[0]
    assert job_id.isdigit(), sub.stdout

    assert _wait_terminal_state(job_id, timeout_s=25) == "COMPLETED"
    log = Path(str(out_file).replace("%j", job_id)).read_text()
    assert "hello-from-slurm" in log


def _submitit_parameters(profile: dict) -> dict:
    """Map a cluster profile (slurm/profiles/*.yaml) onto AutoExecutor.update_parameters."""
    params = {
        "slurm_partition": profile["partition"],
        "nodes": profile["nodes"],
        "tasks_per_node": profile["tasks_per_node"],
        "cpus_per_task": profile["cpus_per_task"],
        "mem_gb": profile["mem_per_task_gb"] * profile["tasks_per_node"],
        "timeout_min": profile["time_limit_min"],
        "slurm_signal_delay_s": profile["signal_delay_s"],
        "slurm_setup": list(profile["setup"] or []),
        "slurm_additional_parameters": dict(profile["additional_parameters"] or {}),
    }
    if profile["gpus_per_node"]:
        params["gpus_per_node"] = profile["gpus_per_node"]
    for key in ("account", "qos", "constraint", "exclude"):
        if profile[key] is not None:
            params[f"slurm_{key}"] = profile[key]
    return params


def test_submitit_autoexecutor_runs_function(cluster: None, tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    yaml = pytest.importorskip("yaml")
    profile = yaml.safe_load(LOCAL_PROFILE.read_text())

    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit", slurm_max_num_timeout=profile["requeue_limit"]
    )
    # cluster=None (the default) auto-detects; with sbatch present it must pick Slurm.
    assert executor.cluster == "slurm"
    executor.update_parameters(name="avbert-test-submitit", **_submitit_parameters(profile))

    # Defined inside the test so cloudpickle ships it by value: the job's interpreter
    # (sys.executable, the repo venv) cannot import this test module by name.
    def tiny(x: int, y: int) -> dict:
        return {
            "product": x * y,
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "python": sys.executable,
            "ds_accelerator": os.environ.get("DS_ACCELERATOR"),  # from the profile's setup
        }

    job = executor.submit(tiny, 6, 7)
    deadline = time.monotonic() + 30
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after 30 s; logs in {tmp_path}")
        time.sleep(0.5)

    result = job.result()
    assert result["product"] == 42
    assert result["job_id"] == str(job.job_id)
    assert result["python"] == sys.executable
    assert result["ds_accelerator"] == "cpu"
    # submitit reads job states with sacct: accounting must report the job as finished.
    assert _wait_terminal_state(str(job.job_id), timeout_s=15) == "COMPLETED"
