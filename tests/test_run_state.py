"""One decision of where a cell stands (``avbert.rundir.state.decide_cell_state``) and its two
wordings: ``tools/status.py``'s (``avbert.launch.status.combine``) and the results tables'
(``avbert.results.runs.stage_state``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avbert.launch.status import combine
from avbert.results.runs import StageRun, stage_detail, stage_state
from avbert.rundir.state import PREEMPT_REQUEUE_GRACE_S, CellKind, decide_cell_state

NOW = 1_800_000_000.0
WROTE = NOW - 60  # the run's last status.json update
RECORDED = NOW  # when the launcher recorded the job word the tables read: after the run last wrote
LIVE_JOB = {"job_id": "4", "cluster": "local"}  # no word from the scheduler reads UNKNOWN, not SUBMITTED


def status(state: str | None, updated: float = WROTE, **extra) -> dict | None:
    return None if state is None else {"state": state, "step": 5, "total_steps": 10, "updated_unix": updated, **extra}


def stage(state: str | None, evaluated: bool = False, updated: float = WROTE, **extra) -> StageRun:
    run = StageRun("finetune", Path("/nowhere"))
    run.status = status(state, updated, **extra)
    run.eval = {"metrics": {"top1": 50.0}} if evaluated else None
    return run


# (scheduler's word, run's state, downstream stage, eval.json written) -> decided kind, whether the job is
# live, tools/status.py's word, the tables' word. The tables read the word as the launcher recorded it,
# after the run's last update, so that the same word decides for both.
TABLE = [
    (None, None, False, False, CellKind.NOT_STARTED, False, "UNKNOWN", "missing"),
    ("PENDING", None, False, False, CellKind.PENDING, True, "PENDING", "pending"),
    ("SUBMITTED", None, False, False, CellKind.PENDING, True, "SUBMITTED", "pending"),
    ("RUNNING", None, False, False, CellKind.RUNNING, True, "RUNNING", "running"),
    ("RUNNING", "running", False, False, CellKind.RUNNING, True, "RUNNING", "running"),
    ("RUNNING", "preempted", False, False, CellKind.RUNNING, True, "RUNNING", "running"),  # requeued, running again
    ("PENDING", "running", False, False, CellKind.PENDING, True, "PENDING", "pending"),  # requeued after a node failure
    ("PENDING", "preempted", False, False, CellKind.PENDING, True, "PENDING", "pending"),  # requeued, waiting
    ("PENDING", "failed", False, False, CellKind.PENDING, True, "PENDING", "pending"),  # resubmitted (--retry-failed)
    ("REQUEUED", "failed", False, False, CellKind.PREEMPTED, True, "REQUEUED", "preempted"),
    ("PREEMPTED", "preempted", False, False, CellKind.PREEMPTED, True, "PREEMPTED", "preempted"),  # just now
    ("PREEMPTED", "running", False, False, CellKind.PREEMPTED, True, "PREEMPTED", "preempted"),  # still saving
    ("TIMEOUT", "running", False, False, CellKind.FAILED, False, "FAILED", "failed"),  # killed before its status
    ("CANCELLED by 1234", None, False, False, CellKind.FAILED, False, "FAILED", "failed"),  # sacct's wording
    ("OUT_OF_MEMORY", "failed", False, False, CellKind.FAILED, False, "FAILED", "failed"),
    ("COMPLETED", "running", False, False, CellKind.FAILED, False, "FAILED", "failed"),  # job gone, stage unfinished
    ("COMPLETED", "preempted", False, False, CellKind.FAILED, False, "FAILED", "failed"),  # never requeued
    ("COMPLETED", "failed", False, False, CellKind.FAILED, False, "FAILED", "failed"),
    ("COMPLETED", "completed", False, False, CellKind.COMPLETED, False, "COMPLETED", "done"),
    ("RUNNING", "completed", False, False, CellKind.COMPLETED, False, "COMPLETED", "done"),  # exporting; done
    ("TIMEOUT", "completed", False, False, CellKind.COMPLETED, False, "COMPLETED", "done"),
    ("RUNNING", "completed", True, False, CellKind.RUNNING, True, "RUNNING", "running"),  # trained, evaluating
    ("COMPLETED", "completed", True, False, CellKind.FAILED, False, "FAILED", "failed"),  # ended without eval.json
    ("TIMEOUT", "completed", True, False, CellKind.FAILED, False, "FAILED", "failed"),  # timed out evaluating
    ("COMPLETED", "completed", True, True, CellKind.COMPLETED, False, "COMPLETED", "done"),
    (None, "completed", True, True, CellKind.COMPLETED, False, "COMPLETED", "done"),
    (None, "completed", False, False, CellKind.COMPLETED, False, "COMPLETED", "done"),
    (None, "failed", False, False, CellKind.FAILED, False, "FAILED", "failed"),
    # The run's own word, which no live job confirms: a researcher's table shows it, the launcher does not trust it.
    (None, "running", False, False, CellKind.RUNNING, False, "UNKNOWN", "running"),
    (None, "preempted", False, False, CellKind.PREEMPTED, False, "UNKNOWN", "preempted"),
    (None, "completed", True, False, CellKind.RUNNING, False, "UNKNOWN", "running"),  # trained, no eval.json
]


@pytest.mark.parametrize("job, run, needs_eval, evaluated, kind, live, status_word, table_word", TABLE)
def test_one_decision_worded_two_ways(job, run, needs_eval, evaluated, kind, live, status_word, table_word):
    decided = decide_cell_state(job, status(run), needs_eval=needs_eval, evaluated=evaluated, now=NOW)
    assert (decided.kind, decided.live) == (kind, live)
    entry = {**LIVE_JOB, "kind": "finetune" if needs_eval else "pretrain"}
    assert combine(entry, status(run), job, evaluated, now=NOW)[0] == status_word
    assert stage_state(stage(run, evaluated), job, needs_eval, job_state_unix=RECORDED) == table_word


def test_reasons_say_why():
    assert combine(LIVE_JOB, status("failed", error="NonFiniteLossError: x"), "COMPLETED", now=NOW) == (
        "FAILED", "NonFiniteLossError: x")
    assert combine(LIVE_JOB, status("failed", error="OSError: disk full"), "FAILED", now=NOW) == (
        "FAILED", "FAILED: OSError: disk full")
    assert combine(LIVE_JOB, status("running"), "COMPLETED", now=NOW) == ("FAILED", "job ended before the stage finished")
    downstream = {**LIVE_JOB, "kind": "linear"}
    assert combine(downstream, status("completed"), "RUNNING", now=NOW) == ("RUNNING", "evaluating")
    assert combine(downstream, status("completed"), "COMPLETED", now=NOW) == ("FAILED", "job ended without eval.json")
    assert combine(downstream, status("completed"), None, now=NOW) == (
        "UNKNOWN", "no live job; run state completed, no eval.json")
    assert combine({}, status("running"), None, now=NOW) == ("NEW", "")  # no job recorded: the launcher may submit it
    assert combine({}, status("failed", error="E"), None, now=NOW) == ("FAILED", "E")


# -- a preempted job that is never requeued -------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["preempted", "running", "failed"])
def test_preempted_and_not_requeued_has_failed(run):
    """Slurm requeues a preempted job at once; still PREEMPTED long after its run last wrote, it never
    will be (PreemptMode=CANCEL, requeue off): failed, so that --retry-failed submits it again."""
    old = status(run, updated=NOW - PREEMPT_REQUEUE_GRACE_S - 1)
    decided = decide_cell_state("PREEMPTED", old, now=NOW)
    assert (decided.kind, decided.reason, decided.live) == (CellKind.FAILED, "preempted and not requeued", False)
    assert combine(LIVE_JOB, old, "PREEMPTED", now=NOW) == ("FAILED", "preempted and not requeued")
    recent = status(run, updated=NOW - PREEMPT_REQUEUE_GRACE_S + 1)
    assert decide_cell_state("PREEMPTED", recent, now=NOW).live  # a requeue may still come
    assert combine(LIVE_JOB, recent, "PREEMPTED", now=NOW) == ("PREEMPTED", "")
    assert decide_cell_state("REQUEUED", old, now=NOW).live  # requeued: it comes back


def test_preempted_before_the_run_wrote_anything_counts_from_the_submission():
    submitted = {**LIVE_JOB, "submitted_unix": NOW - PREEMPT_REQUEUE_GRACE_S - 1}
    assert combine(submitted, None, "PREEMPTED", now=NOW) == ("FAILED", "preempted and not requeued")
    assert combine({**LIVE_JOB, "submitted_unix": NOW - 5}, None, "PREEMPTED", now=NOW)[0] == "PREEMPTED"
    assert combine(LIVE_JOB, None, "PREEMPTED", now=NOW)[0] == "FAILED"  # no time at all: nothing says it lives


def test_the_tables_judge_a_recorded_preempted_word_as_of_when_it_was_recorded():
    """The launcher recorded PREEMPTED: live if the run had written shortly before, else the job was not
    requeued. Judged at the word's time, not now: the tables cannot see a requeue after it."""
    recent = stage("preempted", updated=RECORDED - 60)
    assert stage_state(recent, "PREEMPTED", job_state_unix=RECORDED) == "preempted"
    old = stage("preempted", updated=RECORDED - PREEMPT_REQUEUE_GRACE_S - 1)
    assert stage_state(old, "PREEMPTED", job_state_unix=RECORDED) == "failed"
    decided = decide_cell_state("PREEMPTED", old.status, job_state_current=False, job_state_unix=RECORDED)
    assert stage_detail(old, "failed", decided.reason) == "finetune: preempted and not requeued"
    assert stage_state(stage(None), "PREEMPTED") == "failed"  # no time for either word


# -- a recorded word against the run's newer one --------------------------------------------------------------------
@pytest.mark.parametrize("job, run, updated, expected", [
    ("SUBMITTED", "running", RECORDED + 60, "running"),  # the job started after the launcher recorded it
    ("SUBMITTED", "failed", RECORDED + 60, "failed"),  # the resubmitted job failed too
    ("SUBMITTED", "failed", RECORDED - 60, "pending"),  # a failed run resubmitted, not started yet
    ("RUNNING", "failed", RECORDED + 60, "failed"),  # failed after the launcher saw it run
    ("PENDING", "preempted", RECORDED + 60, "preempted"),  # ran, then was preempted
    ("PREEMPTED", "running", RECORDED + 60, "running"),  # requeued and running again
    ("FAILED", "running", RECORDED + 60, "failed"),  # an ended job's word stands: only a resubmission renews it
])
def test_a_recorded_word_gives_way_to_what_the_run_wrote_after_it(job, run, updated, expected):
    assert stage_state(stage(run, updated=updated), job, job_state_unix=RECORDED) == expected


def test_the_live_scheduler_word_is_never_overtaken_by_the_run():
    """tools/status.py asks the scheduler now: its word is newer than anything the run wrote."""
    assert combine(LIVE_JOB, status("running", updated=NOW), "PENDING", now=NOW)[0] == "PENDING"
    assert combine(LIVE_JOB, status("failed", updated=NOW), "RUNNING", now=NOW)[0] == "RUNNING"
