"""Cell states from the scheduler and the run directory, and ``tools/status.py`` without Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avbert.launch.status import CellStatus, combine, gather, seconds_per_step
from avbert.launch.status_table import duration, status_table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("entry, run, scheduler, expected", [
    ({"job_id": "4"}, {"state": "completed"}, None, "COMPLETED"),
    ({"job_id": "4"}, {"state": "completed"}, "RUNNING", "COMPLETED"),  # exporting; the stage is done
    ({"job_id": "4"}, {"state": "running"}, "RUNNING", "RUNNING"),
    ({"job_id": "4"}, {"state": "preempted"}, "PENDING", "PENDING"),  # requeued, waiting to resume
    ({"job_id": "4"}, None, "PENDING", "PENDING"),
    ({"job_id": "4"}, {"state": "preempted"}, "TIMEOUT", "FAILED"),
    ({"job_id": "4"}, {"state": "running"}, "COMPLETED", "FAILED"),  # job exited without finishing the stage
    ({"job_id": "4"}, {"state": "failed", "error": "NonFiniteLossError"}, None, "FAILED"),
    ({"job_id": "4", "cluster": "slurm", "submitted_unix": "now"}, None, None, "SUBMITTED"),
    ({"job_id": "4", "cluster": "local"}, {"state": "running"}, None, "UNKNOWN"),  # controller gone
    ({}, None, None, "NEW"),
])
def test_states_combine_scheduler_and_run(entry, run, scheduler, expected):
    if entry.get("submitted_unix") == "now":  # taken when the test runs, not when it is collected
        entry = {**entry, "submitted_unix": time.time()}
    assert combine(entry, run, scheduler)[0] == expected


def test_failed_state_says_why():
    assert combine({"job_id": "4"}, None, "OUT_OF_MEMORY") == ("FAILED", "OUT_OF_MEMORY")


def write_metrics(run_dir: Path, points: list[tuple[int, float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": step, "loss": 1.0, "time/elapsed_s": elapsed}) for step, elapsed in points]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_speed_comes_from_the_current_run_of_a_requeued_job(tmp_path):
    write_metrics(tmp_path, [(1, 1.0), (2, 2.0), (3, 3.0), (4, 0.5), (5, 1.0), (6, 1.5)])
    assert seconds_per_step(tmp_path) == pytest.approx(0.5)
    write_metrics(tmp_path / "short", [(1, 1.0)])
    assert seconds_per_step(tmp_path / "short") is None


@pytest.fixture
def controller():
    """A process that looks like submitit's local controller."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit.local._local"])
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.time() + 30
    while b"submitit" not in cmdline.read_bytes() and time.time() < deadline:
        time.sleep(0.05)  # until the child has exec'd: before that it shows the parent's command line
    yield str(process.pid)
    process.kill()
    process.wait()


def fake_experiment(runs: Path, controller_pid: str) -> dict:
    """An index of three local cells: done, running (``controller_pid``), failed."""
    cells = {}
    for variant, state, pid in (("a", "completed", "999999999"), ("b", "running", controller_pid),
                                ("c", "failed", str(os.getpid()))):  # a live pid that is no controller
        run_dir = runs / "exp" / variant / "pretrain"
        write_metrics(run_dir, [(1, 1.0), (2, 2.0), (3, 3.0)])
        (run_dir / "status.json").write_text(json.dumps({"state": state, "step": 3, "total_steps": 10, "loss": 2.5}))
        (run_dir / "job.json").write_text(json.dumps({"starts": [{"job_id": pid}, {"job_id": pid}], "stops": []}))
        cells[f"exp/{variant}/pretrain"] = {"variant": variant, "stage": "pretrain", "run_dir": str(run_dir),
                                            "cluster": "local", "job_id": pid, "log": f"/logs/{pid}_0_log.out"}
    index = {"experiment": "exp", "scale": "tiny", "cells": cells, "launches": []}
    (runs / "exp" / "index.json").write_text(json.dumps(index))
    return index


def test_gather_reads_runs_and_local_jobs(tmp_path, controller):
    statuses = gather(fake_experiment(tmp_path, controller), details=True)
    a, b, c = (statuses[f"exp/{v}/pretrain"] for v in "abc")
    assert (a.state, b.state, c.state) == ("COMPLETED", "RUNNING", "FAILED")
    assert (b.step, b.total, b.loss, b.requeues) == (3, 10, 2.5, 1)
    assert b.eta_s == pytest.approx(7.0) and a.eta_s is None
    assert b.log == f"/logs/{controller}_0_log.out"


def test_status_tool_works_without_slurm(tmp_path, controller):
    fake_experiment(tmp_path / "runs", controller)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no squeue, no sacct
    result = subprocess.run([sys.executable, str(REPO / "tools" / "status.py"), "--runs-dir", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    for text in ("exp (tiny scale)", "a/pretrain", "COMPLETED", "RUNNING", "FAILED", "3/10", "2.5", "_0_log.out"):
        assert text in result.stdout
    missing = subprocess.run([sys.executable, str(REPO / "tools" / "status.py"), "nothing", "--runs-dir",
                              str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 1 and "no experiment 'nothing'" in missing.stderr


def test_table_prints_errors_with_brackets_as_they_are():
    """A run's error quotes a C++ source location in brackets (gloo: ``[/pytorch/.../pair.cc:547]``);
    the table shows it verbatim instead of reading it as console markup."""
    from rich.console import Console

    error = "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer"
    statuses = {"exp/a/pretrain": CellStatus("exp/a/pretrain", "FAILED", error, "11", log="[bold]/logs/11.out")}
    index = {"scale": "tiny", "cells": {"exp/a/pretrain": {"variant": "a", "stage": "pretrain"}}}
    console = Console(width=400, record=True)
    console.print(status_table("exp", index, statuses))
    shown = console.export_text()
    assert "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547]" in shown and "[bold]/logs/11.out" in shown


def test_durations_read_well():
    assert [duration(s) for s in (None, 5, 300, 9000)] == ["-", "5s", "5m", "2h30"]
