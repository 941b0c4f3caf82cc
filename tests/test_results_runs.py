"""A run directory read back: the state of a stage and its cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avbert.results.runs import StageRun, read_stage, stage_detail, stage_hours, stage_state


def run_with(status: str | None = None, evaluated: bool = False, logged: bool = False, **extra) -> StageRun:
    run = StageRun("finetune", Path("/nowhere"))
    if status is not None:
        run.status = {"state": status, "step": 5, "total_steps": 10, **extra}
    run.eval = {"metrics": {"top1": 50.0}} if evaluated else None
    run.metrics = [{"step": 5, "loss": 1.0}] if logged else []
    return run


@pytest.mark.parametrize("status,evaluated,job,needs_eval,expected", [
    (None, False, None, False, "missing"),
    (None, False, "NEW", False, "missing"),
    (None, False, "SUBMITTED", False, "pending"),
    (None, False, "PENDING", True, "pending"),
    (None, False, "RUNNING", False, "running"),
    ("running", False, "RUNNING", False, "running"),
    ("running", False, "TIMEOUT", False, "failed"),  # killed before it could write its status
    ("preempted", False, "PENDING", False, "preempted"),
    ("running", False, "PREEMPTED", False, "running"),  # the run's own word until it is requeued
    (None, False, "PREEMPTED", False, "failed"),  # no sign of life to wait for a requeue from: not requeued
    ("failed", False, "REQUEUED", False, "preempted"),
    (None, False, "CANCELLED by 1234", False, "failed"),  # sacct's wording
    ("failed", False, None, False, "failed"),
    ("failed", False, "PENDING", False, "pending"),  # resubmitted with --retry-failed
    ("completed", False, "COMPLETED", False, "done"),
    ("completed", False, "RUNNING", True, "running"),  # trained, evaluating
    ("completed", False, "COMPLETED", True, "failed"),  # the job ended without eval.json
    ("completed", True, "COMPLETED", True, "done"),
    (None, True, None, True, "done"),
])
def test_stage_state(status, evaluated, job, needs_eval, expected):
    assert stage_state(run_with(status, evaluated), job, needs_eval) == expected


def test_details_name_the_stage_with_progress_or_error():
    assert stage_detail(run_with("running"), "running") == "finetune 5/10"
    assert stage_detail(run_with("completed"), "running") == "finetune evaluating"
    assert stage_detail(run_with("failed", error="OSError: disk full"), "failed") == "finetune: OSError: disk full"
    assert stage_detail(run_with("completed"), "failed") == "finetune: ended without eval.json"
    assert stage_detail(run_with(), "missing") == "finetune"


def test_hours_are_the_last_elapsed_time_the_engine_carried_over_resumes():
    """A resumed run logs its elapsed time from the checkpoint's (1200 s at step 50), so the
    lines a killed attempt logged after that checkpoint (1500 s) are not counted twice."""
    run = StageRun("pretrain", Path("/nowhere"), world_size=2)
    elapsed = [600.0, 1200.0, 1500.0, 1500.0, 2100.0]
    run.metrics = [{"time/elapsed_s": e} for e in elapsed] + [{"eval/top1": 1.0}]
    assert stage_hours(run) == pytest.approx(2100.0 * 2 / 3600.0)


def test_read_stage_tolerates_a_half_written_line_and_counts_ranks(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time/elapsed_s": 1800.0}\n{"step": 2, "ti')
    marker = tmp_path / "checkpoints" / "step_00000001"
    marker.mkdir(parents=True)
    (marker / "rank_0.json").write_text(json.dumps({"step": 1, "world_size": 4}))
    run = read_stage(tmp_path, "pretrain")
    assert len(run.metrics) == 1 and run.unreadable_lines == 1 and run.world_size == 4 and run.config is None
    assert stage_hours(run) == pytest.approx(2.0)  # half an hour on four ranks
