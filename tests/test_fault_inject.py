"""How ``tools/fault_inject.py`` counts the steps a faulted cell lost beyond its checkpoint
interval: each stop (recorded by the job, or a lost run the injector saw) is matched with the
first resume the job's log shows after it."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("fault_inject", ROOT / "tools" / "fault_inject.py")
fault_inject = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fault_inject)

T0 = time.mktime(time.strptime("2026-12-06 23:13:00", "%Y-%m-%d %H:%M:%S"))


def log_line(seconds: float, step: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + int(seconds)))
    return f"{stamp},{int(seconds % 1 * 1000):03d} INFO avbert.train: resumed from step {step} of 60 in /runs/cell\n"


def report(tmp_path: Path, stops: list[dict], lost: list[tuple[float, int, int]], resumed: list[tuple[float, int]]):
    run_dir, logs, reference = tmp_path / "run", tmp_path / "logs", tmp_path / "reference"
    for folder in (run_dir, logs, reference):
        folder.mkdir()
    (logs / "7_0_log.err").write_text("".join(log_line(when, step) for when, step in resumed))
    for folder in (run_dir, reference):
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    entry = {"run_dir": str(run_dir), "job_id": "7", "log": str(logs / "7_0_log.out")}
    lost = [(T0 + when, step, ckpt) for when, step, ckpt in lost]
    stops = [{**stop, "time": T0 + stop["time"]} for stop in stops]
    (run_dir / "job.json").write_text(json.dumps({"starts": [{"job_id": "7"}] * (len(stops) + len(lost) + 1),
                                                  "stops": [{"job_id": "7", **stop} for stop in stops]}))
    return fault_inject.cell_report("cell", entry, "COMPLETED", reference, lost)


def test_each_stop_is_matched_with_the_first_resume_after_it(tmp_path):
    # A recorded stop at step 14, then a node lost twice at step 22 (checkpoint 20) before the job ran again.
    got = report(tmp_path, stops=[{"time": 5, "step": 14, "cause": "sigterm"}],
                 lost=[(30, 22, 20), (40, 22, 20)], resumed=[(10, 14), (50, 20)])
    assert (got["stops"], got["resumes"], got["lost_beyond"], got["equal"]) == (3, 2, 0, True)


def test_a_resume_from_before_the_newest_checkpoint_counts_the_steps_between(tmp_path):
    got = report(tmp_path, stops=[], lost=[(30, 35, 30)], resumed=[(10, 20), (50, 20)])
    assert got["lost_beyond"] == 10


def test_a_resume_just_before_a_stop_belongs_to_the_run_that_stopped(tmp_path):
    # Resumed from 20 at 29.5 s, ran to step 35 and saved step 30, lost at 30 s, resumed from 30.
    got = report(tmp_path, stops=[], lost=[(30, 35, 30)], resumed=[(29.5, 20), (50, 30)])
    assert got["lost_beyond"] == 0


@pytest.mark.parametrize("checkpoint,expected", [(0, 0), (30, None)])
def test_a_stop_no_resume_follows_loses_nothing_only_if_nothing_was_saved(tmp_path, checkpoint, expected):
    got = report(tmp_path, stops=[], lost=[(30, 5, checkpoint)], resumed=[])
    assert got["lost_beyond"] == expected
