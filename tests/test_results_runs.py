"""A run directory read back: the state of a stage and its cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avbert.results.runs import StageRun, read_stage, segment_seconds, stage_detail, stage_hours, stage_state


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


def test_resumed_segments_are_summed():
    elapsed = [10.0, 20.0, 5.0, 15.0, 3.0]  # restarts at 5.0 and at 3.0
    assert segment_seconds([{"time/elapsed_s": e} for e in elapsed] + [{"eval/top1": 1.0}]) == 20 + 15 + 3


def test_read_stage_tolerates_a_half_written_line_and_counts_ranks(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time/elapsed_s": 1800.0}\n{"step": 2, "ti')
    marker = tmp_path / "checkpoints" / "step_00000001"
    marker.mkdir(parents=True)
    (marker / "rank_0.json").write_text(json.dumps({"step": 1, "world_size": 4}))
    run = read_stage(tmp_path, "pretrain")
    assert len(run.metrics) == 1 and run.world_size == 4 and run.config is None
    assert stage_hours(run) == pytest.approx(2.0)  # half an hour on four ranks
