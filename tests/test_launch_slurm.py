"""Launching on the real single-node Slurm cluster (slurm/local-cluster/start.sh).

Skipped only when ``sbatch`` is not on PATH; a cluster that does not answer fails.
The requeue test runs three copies of one cell: uninterrupted (local executor),
requeued by ``scontrol requeue`` mid-run, and cut by a 2-minute time limit whose
USR1 warning comes 30 s before the end; the three per-step losses must be equal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "tools" / "launch.py"
START_HINT = "start it with slurm/local-cluster/start.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}
# Long enough that the first time-limit warning lands mid-run: with a 2-minute limit and a 30 s
# signal delay, Slurm (which checks limits every 30 s) warns 60-90 s after the start.
STEPS = 600

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason=f"sbatch is not on PATH (no Slurm client); {START_HINT}"),
]

def pretrain_experiment(name: str, steps: int, checkpoint_every: int) -> str:
    """A one-cell experiment: the tiny ``xl-part`` pretraining on synthetic data, fp32 on CPU."""
    return f"""
name: {name}
default_scale: tiny
base: {{model: {{fusion: mid}}}}
grid: {{variants: {{xl-part: {{}}}}}}
stages: {{pretrain: {{kind: pretrain}}}}
scales:
  tiny:
    config:
      model: {{preset: tiny}}
      data: {{preset: tiny, source: synthetic, synthetic: {{num_videos: 64}}}}
      train: {{precision: fp32, device: cpu, steps: {steps}, log_every: 1, checkpoint_every: {checkpoint_every}}}
      optim: {{lr: 0.001, warmup_steps: 5}}
    stages:
      pretrain: {{resources: {{nodes: 1}}}}
"""


REQUEUE_EXPERIMENT = pretrain_experiment("requeue", STEPS, 100)


def run(*cmd: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


# The smoke experiment cut to a few steps, logging every step: the pipeline on Slurm, not its learning.
QUICK_SMOKE = {"synthetic: {num_videos: 2560, num_events: 4}": "synthetic: {num_videos: 128, num_events: 4}",
               "log_every: 25": "log_every: 1",
               "config: {train: {steps: 400}}": "config: {train: {steps: 30}}",
               "config: {train: {steps: 200, log_every: 50}": "config: {train: {steps: 20, log_every: 1}"}


def quick_smoke(folder: Path, name: str = "smoke") -> Path:
    """A copy of experiments/smoke.yaml named ``name`` with the QUICK_SMOKE edits."""
    text = (REPO / "experiments" / "smoke.yaml").read_text().replace("name: smoke", f"name: {name}")
    for old, new in QUICK_SMOKE.items():
        assert old in text, f"experiments/smoke.yaml no longer has {old!r}; update QUICK_SMOKE"
        text = text.replace(old, new)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``tools/launch.py`` as a user runs it."""
    return run(sys.executable, str(LAUNCH), *args, timeout=300, cwd=cwd)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    ping = run("scontrol", "ping")
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}); {START_HINT}")
    if run("sacct", "-n", "-X", "-S", "now-1hour", "-o", "JobID").returncode != 0:
        pytest.fail(f"sacct does not answer; {START_HINT}")


def sacct_state(job_id: str) -> str:
    lines = run("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id.split("_")[0]).stdout.splitlines()
    states = dict(line.split("|", 1) for line in lines if "|" in line)
    return states.get(job_id, "").split(" ")[0]


def wait_terminal(job_ids: list[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {job_id: sacct_state(job_id) for job_id in job_ids}
        if all(state in TERMINAL for state in states.values()):
            return states
        time.sleep(2)
    for job_id in job_ids:
        run("scancel", job_id)
    pytest.fail(f"jobs not finished after {timeout_s}s: {states}")


def read_index(runs: Path, experiment: str) -> dict:
    return json.loads((runs / experiment / "index.json").read_text())


def job_ids(index: dict) -> dict[str, str]:
    return {name: cell["job_id"] for name, cell in index["cells"].items() if cell.get("job_id")}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in metrics(run_dir) if "loss" in record}


def test_smoke_completes_on_slurm_and_a_second_launch_submits_nothing(tmp_path):
    runs, experiment = tmp_path / "runs", quick_smoke(tmp_path)
    # Launched from the repository, as users do: the jobs must still import the launch's snapshot.
    first = launch(str(experiment), "--cluster", "slurm", "--runs-dir", str(runs), cwd=REPO)
    assert first.returncode == 0, first.stdout + first.stderr
    index = read_index(runs, "smoke")
    ids = job_ids(index)
    assert len(ids) == 5  # two variants x (pretrain, probe) and the scratch probe
    states = wait_terminal(list(ids.values()), timeout_s=900)
    assert set(states.values()) == {"COMPLETED"}, (states, [c["log"] for c in index["cells"].values()])
    code_dir = index["launches"][0]["code_dir"]
    for name, cell in index["cells"].items():
        run_dir = Path(cell["run_dir"])
        assert json.loads((run_dir / "status.json").read_text())["state"] == "completed", name
        assert len(losses(run_dir)) == yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"], name
        if cell["kind"] != "pretrain":
            assert "eval/top1" in metrics(run_dir)[-1], name
        assert json.loads((run_dir / "job.json").read_text())["starts"][0]["code_dir"] == code_dir
    names = run("squeue", "-h", "-o", "%j").stdout.split()
    second = launch(str(experiment), "--cluster", "slurm", "--runs-dir", str(runs), cwd=REPO)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to submit" in second.stdout
    again = read_index(runs, "smoke")
    assert job_ids(again) == ids and again["launches"] == index["launches"]
    assert {c["state"] for c in again["cells"].values()} == {"COMPLETED"}
    assert [n for n in run("squeue", "-h", "-o", "%j").stdout.split() if n.startswith("smoke:")] == \
        [n for n in names if n.startswith("smoke:")]


def test_dry_run_submits_nothing(tmp_path):
    name = f"dryrun-{uuid.uuid4().hex[:8]}"
    experiment = quick_smoke(tmp_path, name)
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    result = launch(str(experiment), "--cluster", "slurm", "--dry-run", "--runs-dir", str(tmp_path / "runs"),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "plan (dry run)" in result.stdout and "5 of 5 cells to submit" in result.stdout
    time.sleep(1)
    queued = run("squeue", "-h", "-o", "%j").stdout
    accounted = run("sacct", "-X", "-n", "-P", "-S", started, "-o", "JobName").stdout
    assert name not in queued and name not in accounted
    assert not (tmp_path / "runs").exists()


def wait_step(run_dir: Path, step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / "status.json").read_text()).get("step", 0) >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{run_dir} did not reach step {step} in {timeout_s}s")


def test_requeue_and_time_limit_resume_with_the_losses_of_an_uninterrupted_run(tmp_path):
    experiment = tmp_path / "requeue.yaml"
    experiment.write_text(REQUEUE_EXPERIMENT)
    short = tmp_path / "short.yaml"
    short.write_text((REPO / "slurm" / "profiles" / "local.yaml").read_text()
                     .replace("name: local", "name: short").replace("time_limit_min: 10", "time_limit_min: 2")
                     .replace("requeue_limit: 3", "requeue_limit: 20"))
    cell = Path("requeue") / "xl-part" / "pretrain"
    reference = subprocess.Popen([sys.executable, str(LAUNCH), str(experiment), "--cluster", "local",
                                  "--runs-dir", str(tmp_path / "reference")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        limited = launch(str(experiment), "--cluster", "slurm", "--profile", str(short), "--runs-dir",
                         str(tmp_path / "limited"), cwd=tmp_path)
        assert limited.returncode == 0, limited.stdout + limited.stderr
        assert "--signal=USR1@30" in next((tmp_path / "limited" / "requeue" / "logs").glob("*_submission.sh")).read_text()
        requeued = launch(str(experiment), "--cluster", "slurm", "--runs-dir", str(tmp_path / "requeued"), cwd=tmp_path)
        assert requeued.returncode == 0, requeued.stdout + requeued.stderr
        requeued_id = job_ids(read_index(tmp_path / "requeued", "requeue"))["requeue/xl-part/pretrain"]
        wait_step(tmp_path / "requeued" / cell, STEPS // 5, timeout_s=600)
        assert run("scontrol", "requeue", requeued_id).returncode == 0
        limited_id = job_ids(read_index(tmp_path / "limited", "requeue"))["requeue/xl-part/pretrain"]
        states = wait_terminal([requeued_id, limited_id], timeout_s=1200)
        out, _ = reference.communicate(timeout=1200)
    finally:
        if reference.poll() is None:
            reference.kill()
    assert states == {requeued_id: "COMPLETED", limited_id: "COMPLETED"}, states
    assert reference.returncode == 0, out

    expected = losses(tmp_path / "reference" / cell)
    assert sorted(expected) == list(range(1, STEPS + 1))
    for name in ("requeued", "limited"):
        assert losses(tmp_path / name / cell) == expected, name
    requeue_journal = json.loads((tmp_path / "requeued" / cell / "job.json").read_text())
    assert len(requeue_journal["starts"]) >= 2 and requeue_journal["stops"][0]["cause"] == "terminated"
    limit_journal = json.loads((tmp_path / "limited" / cell / "job.json").read_text())
    time_limits = [stop for stop in limit_journal["stops"] if stop["cause"] == "time_limit"]
    assert time_limits and 0 < time_limits[0]["step"] < STEPS
    assert len(limit_journal["starts"]) == len(time_limits) + 1
