"""TensorBoard and W&B beside metrics.jsonl (``train.loggers``), across a killed and resumed run.

The run is real: ``python -m avbert.train pretrain`` on the tiny model, killed while it saves
its step-8 checkpoint (after logging steps 5-8), then started again: it resumes from step 4
and logs steps 5-8 again. TensorBoard's own reader must then show each step once, with the
values ``metrics.jsonl`` holds; W&B (offline) must keep one run id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from training_runs import TINY, train_command, train_env

from avbert.train.loggers import MissingExtra, build_sinks

RUN = TINY + ["data.synthetic.num_videos=64", "data.batch_size=8", "train.steps=8", "train.log_every=1",
              "train.checkpoint_every=4", "train.loggers=[jsonl,tensorboard,wandb]"]


def run(run_dir: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**train_env(), "WANDB_MODE": "offline"}
    if fault:
        env["AVBERT_FAULT"] = fault
    return subprocess.run(train_command("pretrain", run_dir, RUN), env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("loggers") / "run"
    killed = run(run_dir, fault="before_marker@8")
    assert killed.returncode != 0, "the fault should kill the first attempt"
    first_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    done = run(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, first_id


@pytest.mark.slow
def test_tensorboard_shows_each_step_once_with_the_values_of_metrics_jsonl(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = resumed
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {line["step"]: line["loss"] for line in lines if "loss" in line}
    assert sorted(expected) == list(range(1, 9))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    shown = [(event.step, event.value) for event in events.Scalars("loss")]
    assert [step for step, _ in shown] == list(range(1, 9))  # the killed attempt's steps 5-8 purged
    for step, value in shown:
        assert value == pytest.approx(expected[step], rel=1e-6), step
    assert set(events.Tags()["scalars"]) >= {"loss", "lr", "cpp/acc", "perf/clips_per_s"}


@pytest.mark.slow
def test_wandb_keeps_one_run_id_across_the_resume(resumed):
    run_dir, first_id = resumed
    state = json.loads((run_dir / "wandb.json").read_text())
    assert state == {"id": first_id, "last_step": 8}
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(first_id) for name in offline)  # one run, two attempts


def test_a_missing_extra_names_the_pip_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'avbert-suite\[wandb\]'"):
        build_sinks(["jsonl", "wandb"], tmp_path, {})
