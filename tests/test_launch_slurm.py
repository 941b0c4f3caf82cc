"""Launching on the real single-node Slurm cluster (slurm/local-cluster/start.sh).

Skipped only when ``sbatch`` is not on PATH; a cluster that does not answer fails.
The requeue test runs two copies of one cell: uninterrupted (local executor), and on
Slurm under a 2-minute time limit whose USR1 warning is asked for 60 s before the end
(Slurm sends it up to 30 s earlier, so every run of the job is cut 30-60 s in), and
requeued once more by ``scontrol requeue`` between two of those cuts; the per-step
losses of the two must be equal.
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

from avbert.rundir import JOURNAL, STATUS, read_json

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "tools" / "launch.py"
START_HINT = "start it with slurm/local-cluster/start.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}
# The interrupted job's compute (about 0.13 s a step at batch 2 on one core) is several of
# its 30-60 s runs long: a machine twice as fast is still cut by the time limit.
STEPS = 800

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason=f"sbatch is not on PATH (no Slurm client); {START_HINT}"),
]

def pretrain_experiment(name: str, steps: int, checkpoint_every: int, batch_size: int | None = None) -> str:
    """A one-cell experiment: the tiny ``xl-part`` pretraining on synthetic data, fp32 on CPU
    (the tiny preset's batch unless ``batch_size`` is given)."""
    batch = f"batch_size: {batch_size}, " if batch_size else ""
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
      data: {{preset: tiny, source: synthetic, {batch}synthetic: {{num_videos: 64}}}}
      train: {{precision: fp32, device: cpu, steps: {steps}, log_every: 1, checkpoint_every: {checkpoint_every}}}
      optim: {{lr: 0.001, warmup_steps: 5}}
    stages:
      pretrain: {{resources: {{nodes: 1}}}}
"""


REQUEUE_EXPERIMENT = pretrain_experiment("requeue", STEPS, 100, batch_size=2)  # about resuming, not learning


def run(*cmd: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


# The smoke experiment cut to a few steps, logging every step: the pipeline on Slurm, not its learning.
QUICK_SMOKE = {"synthetic: {num_videos: 2560, num_events: 4}": "synthetic: {num_videos: 128, num_events: 4}",
               "log_every: 25": "log_every: 1",
               "config: {train: {steps: 300}}": "config: {train: {steps: 30}}",
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
        if (read_json(run_dir / STATUS) or {}).get("step", 0) >= step:
            return
        time.sleep(0.5)
    pytest.fail(f"{run_dir} did not reach step {step} in {timeout_s}s")


def read_journal(run_dir: Path) -> dict:
    return read_json(run_dir / JOURNAL) or {"starts": [], "stops": []}


def wait_running_after_a_time_limit(run_dir: Path, steps_past: int, timeout_s: float) -> None:
    """Wait until the job was cut by its time limit, runs again, and is ``steps_past`` steps
    beyond where it stopped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        journal = read_journal(run_dir)
        stops = journal["stops"]
        if stops and stops[-1]["cause"] == "time_limit" and len(journal["starts"]) == len(stops) + 1:
            if (read_json(run_dir / STATUS) or {}).get("step", 0) >= stops[-1]["step"] + steps_past:
                return
        time.sleep(0.5)
    pytest.fail(f"{run_dir} was not running again after a time limit within {timeout_s}s: {read_journal(run_dir)}")


def test_requeue_and_time_limit_resume_with_the_losses_of_an_uninterrupted_run(tmp_path):
    experiment = tmp_path / "requeue.yaml"
    experiment.write_text(REQUEUE_EXPERIMENT)
    short = tmp_path / "short.yaml"
    short.write_text((REPO / "slurm" / "profiles" / "local.yaml").read_text()
                     .replace("name: local", "name: short").replace("time_limit_min: 10", "time_limit_min: 2")
                     .replace("signal_delay_s: 30", "signal_delay_s: 60").replace("requeue_limit: 3", "requeue_limit: 20"))
    cell = Path("requeue") / "xl-part" / "pretrain"
    reference = subprocess.Popen([sys.executable, str(LAUNCH), str(experiment), "--cluster", "local",
                                  "--runs-dir", str(tmp_path / "reference")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        cut = launch(str(experiment), "--cluster", "slurm", "--profile", str(short), "--runs-dir",
                     str(tmp_path / "cut"), cwd=tmp_path)
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert "--signal=USR1@60" in next((tmp_path / "cut" / "requeue" / "logs").glob("*_submission.sh")).read_text()
        job_id = job_ids(read_index(tmp_path / "cut", "requeue"))["requeue/xl-part/pretrain"]
        # Between two time-limit cuts, a few steps into a run (its next cut is 20 s away or more).
        wait_running_after_a_time_limit(tmp_path / "cut" / cell, steps_past=10, timeout_s=600)
        assert run("scontrol", "requeue", job_id).returncode == 0
        states = wait_terminal([job_id], timeout_s=1200)
        out, _ = reference.communicate(timeout=1200)
    finally:
        if reference.poll() is None:
            reference.kill()
    assert states == {job_id: "COMPLETED"}, states
    assert reference.returncode == 0, out

    expected = losses(tmp_path / "reference" / cell)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert losses(tmp_path / "cut" / cell) == expected
    journal = read_journal(tmp_path / "cut" / cell)
    causes = [stop["cause"] for stop in journal["stops"]]
    assert causes.count("terminated") == 1 and causes.count("time_limit") >= 1, causes
    assert all(0 < stop["step"] < STEPS for stop in journal["stops"])
    assert len(journal["starts"]) == len(journal["stops"]) + 1
