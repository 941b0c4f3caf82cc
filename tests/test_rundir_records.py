"""The typed records of a run directory's files (``avbert.rundir.records``): what the engine
writes reads back into them with every field set and writes back the same bytes, and a
damaged or foreign file reads as None (or None fields) without raising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from avbert.rundir import (EVAL, METRICS, STATUS, CellKind, EvalRecord, MetricsLine, RunState, RunStatus,
                           decide_cell_state, read_json, read_jsonl)

FIXTURE_RUNS = Path(__file__).resolve().parent / "fixtures" / "runs" / "runs"
PLACEMENT = {"device": "cuda", "world_size": 2, "hosts": ["node1", "node2"], "manifest_sha256": "ab" * 32}


def status_of(state, **extra) -> dict:
    """A status.json object as the engine writes it, keys in its order."""
    return {"state": state, "step": 40, "total_steps": 100, "loss": 3.25, "updated": "2026-11-23T12:00:00+0000",
            "updated_unix": 1795000000.5, **extra}


def dumped(data) -> str:
    return json.dumps(data, indent=1) + "\n"


ENGINE_STATUSES = [
    status_of("running", **PLACEMENT),
    status_of("completed", **PLACEMENT, export="/runs/x/pretrain/export/model.pt"),
    status_of("completed", **{**PLACEMENT, "manifest_sha256": None}, export=None),  # synthetic data, no export
    status_of("preempted", **PLACEMENT, export=None),
    status_of("failed", **PLACEMENT, error="NonFiniteLossError: non-finite loss at step 41: loss"),
    {**status_of("failed", error="OSError: disk full"), "loss": None},  # failed before the loop started
]

EVAL_JSON = {"task": "ucf101", "protocol": "finetune", "feature": "m_context", "split": "1",
             "metrics": {"top1": 61.5, "top5": 88.25}, "videos": 3783, "views_per_video": [10],
             "test_views": 10, "test_crops": 3, "num_classes": 101, "multilabel": False, "map_classes": None,
             "step": 2000, "pretrained": "/runs/x/pretrain/export/model.pt",
             "model_config": {"preset": "tiny", "fusion": "mid"}, "params": {"transformers": 10, "cnns": 5, "total": 15}}


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("data", ENGINE_STATUSES, ids=lambda d: f"{d['state']}-{len(d)}")
def test_a_status_the_engine_writes_round_trips_key_for_key(data):
    record = RunStatus.from_json(data)
    assert isinstance(record.state, RunState) and record.state.value == data["state"]
    assert dumped(record.to_json()) == dumped(data)  # same keys, same order, same nulls
    assert RunStatus.from_json(record.to_json()) == record


def test_a_built_status_writes_its_fields():
    record = RunStatus(state=RunState.RUNNING, step=3, total_steps=9, loss=1.0, updated="t", updated_unix=5.0,
                       device="cpu", world_size=1, hosts=("h",))
    assert record.to_json() == {"state": "running", "step": 3, "total_steps": 9, "loss": 1.0, "updated": "t",
                                "updated_unix": 5.0, "device": "cpu", "world_size": 1, "hosts": ["h"],
                                "manifest_sha256": None}
    assert record.hosts == ("h",) and RunStatus.from_json(record.to_json()) == record


def test_a_metrics_line_round_trips_in_the_engines_order():
    line = {"step": 50, "loss": 2.5, "cls/acc": 0.75, "lr": 0.001, "grad_norm": None, "perf/clips_per_s": 150.0,
            "perf/peak_mem_mb": 1536.0, "data/skipped": 3, "time/elapsed_s": 900.0}
    record = MetricsLine.from_json(line)
    assert (record.step, record.elapsed_s) == (50, 900.0)
    assert record.values["data/skipped"] == 3 and record.values["grad_norm"] is None
    assert "step" not in record.values and "time/elapsed_s" not in record.values
    assert record.get("time/elapsed_s") == 900.0 and record.get("loss") == 2.5 and record.get("absent") is None
    assert json.dumps(record.to_json()) == json.dumps(line)
    evaluation = {"step": 20, "eval/top1": 29.5}  # a downstream stage's last line: no wall time
    assert json.dumps(MetricsLine.from_json(evaluation).to_json()) == json.dumps(evaluation)


def test_a_metrics_lines_values_are_read_only():
    record = MetricsLine(1, {"loss": 1.0})
    with pytest.raises(TypeError):
        record.values["loss"] = 2.0  # type: ignore[index]


def test_an_evaluation_round_trips():
    record = EvalRecord.from_json(EVAL_JSON)
    assert record.metrics == {"top1": 61.5, "top5": 88.25} and record.views_per_video == (10,)
    assert record.params == {"transformers": 10, "cnns": 5, "total": 15} and record.multilabel is False
    assert json.dumps(record.to_json(), sort_keys=True) == json.dumps(EVAL_JSON, sort_keys=True)
    assert EvalRecord.from_json(record.to_json()) == record


# -- damaged and foreign files ------------------------------------------------------------------
NOT_OBJECTS = [None, [], [1, 2], "completed", 3, 2.5, True]


@pytest.mark.parametrize("data", NOT_OBJECTS)
def test_what_is_not_an_object_is_no_record(data):
    assert RunStatus.from_json(data) is None
    assert MetricsLine.from_json(data) is None
    assert EvalRecord.from_json(data) is None


def test_a_status_with_wrong_types_reads_them_as_none():
    damaged = {"state": "exploded", "step": "40", "total_steps": True, "loss": "nan", "updated": 5,
               "updated_unix": float("inf"), "device": 1, "world_size": 2.5, "hosts": ["a", 1],
               "manifest_sha256": [], "export": {}, "error": 7}
    record = RunStatus.from_json(damaged)
    assert record == RunStatus(state=None)
    assert RunStatus.from_json({}) == RunStatus(state=None)
    assert RunStatus.from_json({"state": "COMPLETED", "step": 7.0}).state is RunState.COMPLETED  # any case
    assert RunStatus.from_json({"step": 7.0}).step == 7
    assert RunStatus.from_json({"hosts": "node1"}).hosts is None


def test_a_metrics_line_keeps_only_numbers():
    record = MetricsLine.from_json({"step": "x", "loss": "1.0", "ok": 1.5, "flag": True, "list": [1],
                                    "time/elapsed_s": "later"})
    assert record == MetricsLine(step=None, values={"ok": 1.5})
    assert MetricsLine.from_json({}) == MetricsLine(step=None)
    assert MetricsLine.from_json({"time/elapsed_s": 3.0}).to_json() == {"time/elapsed_s": 3.0}


def test_an_evaluation_with_wrong_types_reads_them_as_none():
    damaged = {"task": 5, "metrics": {"top1": "61", "top5": 90.0, "map": None}, "videos": "many",
               "views_per_video": [10, "x"], "multilabel": "no", "params": {"total": "15", "cnns": 5},
               "model_config": "tiny", "split": 1, "pretrained": False}
    record = EvalRecord.from_json(damaged)
    assert record.task is None and record.metrics == {"top5": 90.0} and record.videos is None
    assert record.views_per_video is None and record.multilabel is None and record.params == {"cnns": 5}
    assert record.model_config is None and record.split == "1" and record.pretrained is None
    assert EvalRecord.from_json({"metrics": [61.5]}).metrics == {}
    assert EvalRecord.from_json({}) == EvalRecord()


def test_the_readers_take_damaged_files_without_raising(tmp_path):
    (tmp_path / STATUS).write_text('{"state": "runn')
    (tmp_path / EVAL).write_text("[1, 2]")
    (tmp_path / METRICS).write_text('{"step": 1}\n[3]\n"text"\n{"step": 2, "lo')
    assert RunStatus.from_json(read_json(tmp_path / STATUS)) is None
    assert EvalRecord.from_json(read_json(tmp_path / EVAL)) is None
    lines, bad = read_jsonl(tmp_path / METRICS)
    assert [MetricsLine.from_json(line).step for line in lines] == [1] and bad == 3


def test_the_cell_decision_takes_a_status_as_read_or_typed():
    for data in ENGINE_STATUSES + [{"state": "bogus"}, {}]:
        for job in (None, "RUNNING", "PREEMPTED", "COMPLETED", "FAILED"):
            kwargs = dict(needs_eval=True, job_state_current=False, job_state_unix=1795000000.0)
            assert (decide_cell_state(job, RunStatus.from_json(data), **kwargs)
                    == decide_cell_state(job, data, **kwargs)), (job, data)
    failed = RunStatus.from_json(ENGINE_STATUSES[-1])
    assert decide_cell_state(None, failed).kind is CellKind.FAILED
    assert decide_cell_state(None, failed).reason == "OSError: disk full"


# -- real run directories ----------------------------------------------------------------------
def test_every_fixture_run_directory_parses():
    """The run directories tests/test_collect.py reads (tests/fixtures/runs/make_fixtures.py)."""
    statuses = sorted(FIXTURE_RUNS.rglob(STATUS))
    evaluations = sorted(FIXTURE_RUNS.rglob(EVAL))
    metrics = sorted(FIXTURE_RUNS.rglob(METRICS))
    assert statuses and evaluations and metrics
    for path in statuses:
        record = RunStatus.from_json(read_json(path))
        assert record.state is not None and record.step is not None and record.total_steps is not None, path
        assert record.updated is not None and record.updated_unix is not None, path
        if record.state is RunState.FAILED:
            assert record.error, path
    for path in evaluations:
        record = EvalRecord.from_json(read_json(path))
        assert record.task and record.protocol and record.feature and record.metrics, path
        assert record.views_per_video and record.test_views and record.step is not None, path
    for path in metrics:
        for line in read_jsonl(path)[0]:
            record = MetricsLine.from_json(line)
            assert record.step is not None and record.values, path
            assert record.to_json() == line, path


class Points(Dataset):
    """Item i: a seeded 8-d point and whether its coordinates sum above zero."""

    def __len__(self):
        return 32

    def __getitem__(self, i):
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        return {"x": x, "y": (x.sum() > 0).long(), "index": torch.tensor(i)}


class PointClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 2)

    def forward(self, batch):
        loss = nn.functional.cross_entropy(self.net(batch["x"]).float(), batch["y"])
        return {"loss": loss, "cls/loss": loss}


def test_what_the_engine_writes_parses_with_every_field_set(tmp_path):
    """A real run (DeepSpeed, one CPU rank): its status.json and metrics.jsonl read into records
    with every field the run has set, and write back the same bytes; its evaluation's
    eval.json and metrics line (the downstream writer) likewise."""
    from avbert.config import load_config
    from avbert.data.resumable import ResumableLoader
    from avbert.train.distributed import setup_distributed
    from avbert.train.downstream import write_eval
    from avbert.train.engine import run_training

    cfg = load_config(None, ["data.batch_size=8", "train.precision=fp32", "train.zero_stage=0", "train.log_every=1",
                             "train.checkpoint_every=2", "train.steps=2", "optim.warmup_steps=0",
                             "train.device=cpu", f"train.run_dir={tmp_path}"])
    env = setup_distributed("cpu")
    torch.manual_seed(0)
    loader = ResumableLoader(Points(), cfg.data.batch_size, env.rank, env.world_size, seed=cfg.train.seed)
    outcome = run_training(cfg, PointClassifier(), loader, env, make_export=lambda sd: {"model": sd})
    assert outcome.status == "completed"

    text = (tmp_path / STATUS).read_text()
    status = RunStatus.from_json(json.loads(text))
    assert status.state is RunState.COMPLETED and (status.step, status.total_steps) == (2, 2)
    assert status.loss is not None and status.updated and status.updated_unix is not None
    assert (status.device, status.world_size) == ("cpu", 1) and status.hosts and len(status.hosts) == 1
    assert status.export == str(tmp_path / "export" / "model.pt") and status.error is None
    assert status.manifest_sha256 is None  # synthetic data: no manifest
    assert dumped(status.to_json()) == text

    lines = (tmp_path / METRICS).read_text().splitlines()
    records = [MetricsLine.from_json(json.loads(line)) for line in lines]
    assert [r.step for r in records] == [1, 2] and all(r.elapsed_s is not None for r in records)
    assert {"loss", "cls/loss", "lr", "grad_norm", "perf/clips_per_s", "perf/peak_mem_mb"} <= set(records[-1].values)
    assert [json.dumps(r.to_json()) for r in records] == lines

    evaluation = EvalRecord.from_json(EVAL_JSON)
    write_eval(tmp_path, evaluation.to_json(), loggers=("jsonl",))
    written = (tmp_path / EVAL).read_text()
    assert EvalRecord.from_json(json.loads(written)) == evaluation
    assert json.dumps(EvalRecord.from_json(json.loads(written)).to_json(), indent=1, sort_keys=True) + "\n" == written
    last = MetricsLine.from_json(read_jsonl(tmp_path / METRICS)[0][-1])
    assert last == MetricsLine(2000, {"eval/top1": 61.5, "eval/top5": 88.25})
