"""Exact resumption of a two-rank ZeRO-2 pretraining run of the tiny AVBERT.

Every run is ``torchrun --nproc_per_node 2 -m avbert.train pretrain`` on
the synthetic data, fp32. ``AVBERT_FAULT`` SIGKILLs the ranks at a named
point of a save: right after the checkpoint of step 4 is complete, or on
rank 1 between its DeepSpeed files and its completion marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avbert.train import checkpoint as ckpt
from avbert.train.metrics import read_metrics, read_status

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 4
OVERRIDES = [
    "model.preset=tiny", "data.preset=tiny", "data.synthetic.num_videos=80", "data.batch_size=8",
    "train.precision=fp32", "train.zero_stage=2", f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}",
    "train.log_every=1", "train.keep_checkpoints=1", "optim.lr=0.0005", "optim.warmup_steps=2",
]


def rank_env(fault: str | None = None) -> dict:
    """One CPU thread, the checkout on the path, no rank variables inherited; ``fault``: the
    ``AVBERT_FAULT`` to set."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", ckpt.FAULT_ENV):
        env.pop(key, None)
    if fault:
        env[ckpt.FAULT_ENV] = fault
    return env


def torchrun(nproc: int) -> list[str]:
    """The interpreter, under ``torch.distributed.run`` when there is more than one rank."""
    return [sys.executable, *(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                              if nproc > 1 else [])]


def pretrain(run_dir: Path, nproc: int = 2, fault: str | None = None, extra: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess:
    command = [*torchrun(nproc), "-m", "avbert.train", "pretrain", *OVERRIDES, *extra, f"train.run_dir={run_dir}"]
    return subprocess.run(command, env=rank_env(fault), capture_output=True, text=True, timeout=300)


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_metrics(run_dir)]


def exported(run_dir: Path) -> dict:
    return torch.load(run_dir / "export" / "model.pt")["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    result = pretrain(run_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_gives_identical_losses(reference, tmp_path):
    killed = pretrain(tmp_path, fault=f"after_checkpoint@{EVERY}")
    assert killed.returncode != 0
    assert ckpt.latest_complete(tmp_path).step == EVERY
    assert [step for step, _ in step_losses(tmp_path)] == list(range(1, EVERY + 1))
    assert read_status(tmp_path)["state"] == "running"  # killed, not failed

    resumed = pretrain(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {EVERY}" in resumed.stderr
    assert step_losses(tmp_path) == step_losses(reference)
    assert len(step_losses(tmp_path)) == STEPS
    ref, res = exported(reference), exported(tmp_path)
    assert ref.keys() == res.keys() and all(torch.equal(ref[k], res[k]) for k in ref)
    assert read_status(tmp_path)["state"] == "completed"


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(reference, tmp_path):
    killed = pretrain(tmp_path, fault=f"before_marker@{STEPS}:1")
    assert killed.returncode != 0
    partial = ckpt.step_dir(tmp_path, STEPS)
    assert partial.exists() and not (partial / "rank_1.json").exists()
    assert ckpt.latest_complete(tmp_path).step == EVERY  # kept despite keep_checkpoints=1
    assert not (tmp_path / "export").exists()

    resumed = pretrain(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert step_losses(tmp_path) == step_losses(reference)
    assert [info.step for info in ckpt.complete_checkpoints(tmp_path)] == [STEPS]
    assert not ckpt.step_dir(tmp_path, EVERY).exists()  # pruned once step 8 was complete


@pytest.mark.slow
def test_resume_with_another_zero_stage_is_refused(reference, tmp_path):
    """Another world size resumes (tests/test_resume_world_size.py); another ZeRO stage is refused,
    naming both shapes, and never starts afresh."""
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    result = pretrain(run_dir, extra=("train.zero_stage=1",))
    assert result.returncode == 1
    assert "world size 2 and ZeRO stage 2" in result.stderr
    assert "world size 2 and ZeRO stage 1" in result.stderr
    assert read_status(run_dir)["state"] == "failed"
