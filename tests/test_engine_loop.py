"""The DeepSpeed training loop in this process (one rank, gloo, real DeepSpeed)
on a small classifier that returns its losses like the pretraining objective."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from avbert.config import load_config
from avbert.data.resumable import ResumableLoader, epoch_order
from avbert.train import checkpoint as ckpt
from avbert.train.distributed import setup_distributed
from avbert.train.engine import NonFiniteLossError, run_training
from avbert.train.metrics import read_metrics, read_status
from avbert.train.progress import ProgressReporter


class Points(Dataset):
    """Item i: a seeded 8-d point and whether its coordinates sum above zero;
    with ``report_skips``, every 4th item says it skipped one unreadable file."""

    def __init__(self, report_skips: bool = False):
        self.report_skips = report_skips

    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        item = {"x": x, "y": (x.sum() > 0).long(), "index": torch.tensor(i)}
        if self.report_skips:
            item["skipped/decode"] = int(i % 4 == 0)
        return item


class PointClassifier(nn.Module):
    """Returns ``loss`` and named terms; its ``nan_at``-th forward call yields a NaN ``cls/loss``."""

    def __init__(self, dropout: float = 0.1, nan_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 2))
        self.aux = nn.Linear(8, 1)
        self.calls, self.nan_at = 0, nan_at
        self.compute_dtype, self.compiled = None, False

    def forward(self, batch):
        self.calls += 1
        self.compiled = torch.compiler.is_compiling()
        logits = self.net(batch["x"])
        self.compute_dtype = logits.dtype
        logits = logits.float()
        cls = nn.functional.cross_entropy(logits, batch["y"])
        if self.calls == self.nan_at:
            cls = cls * float("nan")
        aux = self.aux(batch["x"]).float().pow(2).mean()
        acc = (logits.argmax(-1) == batch["y"]).float().mean()
        return {"loss": cls + 0.1 * aux, "cls/loss": cls, "cls/acc": acc, "aux/loss": aux}


BASE = ["data.batch_size=8", "train.precision=fp32", "train.zero_stage=2", "train.log_every=1",
        "train.checkpoint_every=2", "train.steps=6", "optim.lr=0.01", "optim.warmup_steps=2", "train.device=cpu"]


def train(run_dir, *overrides, dropout=0.1, nan_at=None, preempt_after=None, report_skips=False):
    """One call of the loop on ``run_dir``; returns (outcome, module).

    ``preempt_after``: request checkpoint-and-exit once the module has run that many forward passes.
    """
    cfg = load_config(None, [*BASE, *overrides, f"train.run_dir={run_dir}"])
    env = setup_distributed("cpu")
    torch.manual_seed(0)
    module = PointClassifier(dropout, nan_at)
    hook = None if preempt_after is None else (lambda: module.calls >= preempt_after)
    loader = ResumableLoader(Points(report_skips), cfg.data.batch_size, env.rank, env.world_size, seed=cfg.train.seed)
    outcome = run_training(cfg, module, loader, env, make_export=lambda sd: {"model": sd},
                           should_checkpoint_and_exit=hook)
    return outcome, module


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


def test_run_writes_config_metrics_status_checkpoints_and_export(tmp_path):
    outcome, module = train(tmp_path, "train.log_every=2", "train.keep_checkpoints=2")
    assert outcome.status == "completed" and outcome.step == 6
    cfg = load_config(None, [*BASE, "train.log_every=2", "train.keep_checkpoints=2", f"train.run_dir={tmp_path}"])
    assert load_config(tmp_path / "config.yaml") == cfg
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6]
    expected = {"step", "loss", "cls/loss", "cls/acc", "aux/loss", "lr", "grad_norm", "perf/clips_per_s",
                "perf/peak_mem_mb", "data/skipped", "time/elapsed_s"}
    assert expected <= set(records[-1])
    assert all(isinstance(v, (int, float)) for r in records for v in r.values())
    assert records[-1]["perf/peak_mem_mb"] > 0 and records[-1]["grad_norm"] > 0
    status = read_status(tmp_path)
    assert status["state"] == "completed" and status["step"] == 6 and status["total_steps"] == 6
    assert status["loss"] == records[-1]["loss"]
    assert (status["device"], status["world_size"]) == ("cpu", 1)  # what collect reads for CPU-hours
    assert [i.step for i in ckpt.complete_checkpoints(tmp_path)] == [4, 6]
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()) == ["step_00000004", "step_00000006"]
    marker = json.loads((ckpt.step_dir(tmp_path, 6) / "rank_0.json").read_text())
    assert marker["loader"]["position"] == 6 % 8 and marker["world_size"] == 1 and marker["zero_stage"] == 2
    exported = torch.load(tmp_path / "export" / "model.pt")
    assert exported["step"] == 6
    fresh = PointClassifier()
    fresh.load_state_dict(exported["model"])
    for name, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (0, "bf16"), (1, "bf16"), (2, "bf16"), (3, "fp32"),
                                             (3, "bf16")])
def test_every_zero_stage_and_precision_trains_and_exports(tmp_path, stage, precision):
    outcome, _ = train(tmp_path, f"train.zero_stage={stage}", f"train.precision={precision}", "train.steps=4")
    assert outcome.status == "completed"
    records = read_metrics(tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in records)
    exported = torch.load(tmp_path / "export" / "model.pt")["model"]
    assert all(v.dtype == torch.float32 for v in exported.values())
    PointClassifier().load_state_dict(exported)


def test_bf16_computes_in_bfloat16_and_keeps_fp32_weights(tmp_path):
    _, module = train(tmp_path, "train.precision=bf16", "train.steps=2")
    assert module.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.parameters())
    _, module = train(tmp_path / "fp32", "train.precision=fp32", "train.steps=2")
    assert module.compute_dtype == torch.float32


@pytest.mark.slow
def test_compile_runs_the_module_compiled_with_the_eager_losses(tmp_path):
    outcome, module = train(tmp_path / "compiled", "train.compile=true", "train.steps=3", dropout=0.0)
    assert outcome.status == "completed" and module.compiled
    _, eager = train(tmp_path / "eager", "train.steps=3", dropout=0.0)
    assert not eager.compiled
    compiled, plain = [[loss for _, loss in losses(tmp_path / run)] for run in ("compiled", "eager")]
    assert compiled == pytest.approx(plain, rel=1e-4)
    PointClassifier().load_state_dict(torch.load(tmp_path / "compiled" / "export" / "model.pt")["model"])


def test_fp32_losses_agree_across_zero_stages(tmp_path):
    runs = {stage: [loss for _, loss in losses(train(tmp_path / str(stage), f"train.zero_stage={stage}")[0].run_dir)]
            for stage in (0, 2, 3)}
    assert runs[0] == pytest.approx(runs[2], rel=1e-6) and runs[0] == pytest.approx(runs[3], rel=1e-6)


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    big, big_module = train(tmp_path / "big", "data.batch_size=8", dropout=0.0)
    acc, acc_module = train(tmp_path / "acc", "data.batch_size=4", "train.grad_accum=2", dropout=0.0)
    assert [l for _, l in losses(big.run_dir)] == pytest.approx([l for _, l in losses(acc.run_dir)], rel=1e-5)
    assert acc_module.calls == 2 * big_module.calls
    for (name, a), b in zip(big_module.state_dict().items(), acc_module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_preempt_request_checkpoints_and_resume_is_exact(tmp_path):
    reference, _ = train(tmp_path / "ref", "train.steps=8")
    outcome, _ = train(tmp_path / "run", "train.steps=8", preempt_after=3)
    assert outcome.status == "preempted" and outcome.step == 3
    assert ckpt.latest_complete(tmp_path / "run").step == 3
    assert read_status(tmp_path / "run")["state"] == "preempted"
    assert not (tmp_path / "run" / "export").exists()
    resumed, _ = train(tmp_path / "run", "train.steps=8")
    assert resumed.status == "completed" and resumed.step == 8
    assert losses(tmp_path / "run") == losses(reference.run_dir)
    ref_weights = torch.load(tmp_path / "ref" / "export" / "model.pt")["model"]
    run_weights = torch.load(tmp_path / "run" / "export" / "model.pt")["model"]
    assert all(torch.equal(ref_weights[k], run_weights[k]) for k in ref_weights)


def test_non_finite_loss_stops_naming_step_and_terms_without_saving(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        train(tmp_path, "train.steps=8", nan_at=5)
    text = str(err.value)
    assert "step 5" in text and "cls/loss" in text and "loss" in text and "aux/loss" not in text
    assert "last complete checkpoint: step 4" in text
    assert ckpt.latest_complete(tmp_path).step == 4
    assert not ckpt.step_dir(tmp_path, 5).exists()
    status = read_status(tmp_path)
    assert status["state"] == "failed" and "NonFiniteLossError" in status["error"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_resume_with_another_zero_stage_is_refused(tmp_path):
    train(tmp_path, "train.steps=2")
    with pytest.raises(ckpt.CheckpointMismatchError, match="ZeRO stage 2.*ZeRO stage 1"):
        train(tmp_path, "train.steps=4", "train.zero_stage=1")
    assert read_status(tmp_path)["state"] == "failed"


def test_relaunching_a_completed_run_only_re_exports(tmp_path):
    train(tmp_path, "train.steps=2")
    before = losses(tmp_path)
    (tmp_path / "export" / "model.pt").unlink()
    outcome, module = train(tmp_path, "train.steps=2")
    assert outcome.status == "completed" and module.calls == 0
    assert losses(tmp_path) == before and (tmp_path / "export" / "model.pt").exists()


def test_skips_reported_by_the_dataset_reach_the_metrics_as_running_totals(tmp_path):
    train(tmp_path, "train.steps=4", report_skips=True)
    counts = [r["data/skipped/decode"] for r in read_metrics(tmp_path)]
    seen = epoch_order(64, 0, seed=0)[:32]  # the 4 batches of 8 the run consumed
    assert counts == sorted(counts) and counts[-1] == int((seen % 4 == 0).sum())
    assert all(r["data/skipped"] == 0 for r in read_metrics(tmp_path))


def test_plain_log_lines_when_not_on_a_terminal(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="avbert.train"):
        train(tmp_path, "train.steps=2")
    lines = [r.getMessage() for r in caplog.records if r.name == "avbert.train"]
    assert any(line.startswith("step 2/2 loss ") and "lr" in line for line in lines)


def test_progress_bar_mode_runs_and_closes():
    progress = ProgressReporter(total=3, start=1, enabled=True, use_bar=True)
    progress.advance(2)
    progress.log(3, {"loss": 1.0, "lr": 1e-3})
    progress.message("done")
    progress.close()
    assert progress._bar is None
