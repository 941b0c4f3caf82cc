"""Checkpoints that are damaged or cannot be written are never resumed from.

The unit tests build a checkpoint folder by hand and check what the completion
marker (``rank_0.json``, with every file's size and SHA-256) lets resumption
tell. The slow tests run ``torchrun --nproc_per_node 2 -m avbert.train
pretrain`` on the tiny AVBERT (ZeRO-2, fp32, the synthetic data, as
tests/test_resume.py does): a run whose newest checkpoint lost or had a shard
truncated resumes from the one before, and a run whose disk (a size-limited
tmpfs) fills up during a save stops with an error naming the checkpoint and the
full disk, keeps its previous checkpoint, and resumes from it once there is room.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from avbert.train import checkpoint as ckpt
from avbert.train.metrics import read_metrics, read_status
from test_resume import rank_env, torchrun

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 4
OVERRIDES = [
    "model.preset=tiny", "data.preset=tiny", "data.synthetic.num_videos=80", "data.batch_size=8",
    "train.precision=fp32", "train.zero_stage=2", f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}",
    "train.log_every=1", "optim.lr=0.0005", "optim.warmup_steps=2",
]


def pretrain(run_dir: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [*torchrun(nproc), "-m", "avbert.train", "pretrain", *OVERRIDES, *extra, f"train.run_dir={run_dir}"]
    return subprocess.run(command, env=rank_env(), capture_output=True, text=True, timeout=300)


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_metrics(run_dir)]


def exported(run_dir: Path) -> dict:
    return torch.load(run_dir / "export" / "model.pt")["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# -- the completion marker ------------------------------------------------------------------------------------
def written_checkpoint(run_dir: Path, step: int, world_size: int = 2) -> Path:
    """A checkpoint folder as a save leaves it: shards, rank files, then rank 0's marker."""
    path = ckpt.step_dir(run_dir, step)
    (path / "ds").mkdir(parents=True)
    for rank in range(world_size):
        (path / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(4096))
        marker = {"step": step, "world_size": world_size, "zero_stage": 2, "rank": rank, "loader": {}}
        if rank:
            ckpt.save_rank_files(path, rank, marker)
    ckpt.write_completion_marker(path, {"step": step, "world_size": world_size, "zero_stage": 2, "rank": 0,
                                        "loader": {}})
    return path


def test_completion_marker_lists_every_other_file_with_size_and_sha256(tmp_path):
    path = written_checkpoint(tmp_path, 4)
    files = json.loads((path / "rank_0.json").read_text())["files"]
    assert sorted(files) == ["ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                             "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "rank_1.json", "rank_1.pt"]
    shard = path / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert files[shard.relative_to(path).as_posix()]["bytes"] == 4096
    assert ckpt.resume_point(tmp_path) == ckpt.ResumePoint(ckpt.latest_complete(tmp_path))


@pytest.mark.parametrize("damage,reason", [
    (lambda shard: shard.write_bytes(shard.read_bytes()[:1000]), "is 1000 bytes, rank_0.json recorded 4096"),
    (lambda shard: shard.unlink(), "is missing"),
    (lambda shard: shard.write_bytes(bytes(4096)), "does not have the SHA-256"),
])
def test_a_damaged_newest_checkpoint_is_passed_over_naming_the_file(tmp_path, damage, reason):
    written_checkpoint(tmp_path, 4)
    newest = written_checkpoint(tmp_path, 8)
    shard = newest / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    damage(shard)
    point = ckpt.resume_point(tmp_path)
    assert point.info.step == 4
    [(path, why)] = point.rejected
    assert path == str(newest) and str(shard) in why and reason in why
    [line] = point.report()
    assert f"checkpoint {newest} is not complete" in line and f"resuming from {ckpt.step_dir(tmp_path, 4)}" in line


def test_size_checks_alone_decide_latest_complete(tmp_path):
    written_checkpoint(tmp_path, 4)
    newest = written_checkpoint(tmp_path, 8)
    (newest / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert ckpt.latest_complete(tmp_path).step == 4
    assert [info.step for info in ckpt.complete_checkpoints(tmp_path)] == [4]


def test_a_save_that_never_finished_is_passed_over_and_a_fresh_start_allowed(tmp_path):
    path = ckpt.step_dir(tmp_path, 4)
    (path / "ds").mkdir(parents=True)
    ckpt.save_rank_files(path, 1, {"step": 4, "world_size": 2, "zero_stage": 2, "rank": 1, "loader": {}})
    point = ckpt.resume_point(tmp_path)
    assert point.info is None
    assert "no readable completion marker" in point.rejected[0][1]


def test_every_checkpoint_damaged_refuses_to_start_again_at_step_0(tmp_path):
    path = written_checkpoint(tmp_path, 4)
    (path / "rank_1.pt").unlink()
    with pytest.raises(ckpt.CheckpointDamagedError) as err:
        ckpt.resume_point(tmp_path)
    assert f"{path / 'rank_1.pt'} is missing" in str(err.value) and "move" in str(err.value)


def test_full_disk_is_recognised_from_errno_or_from_the_free_space_left(tmp_path):
    assert ckpt.is_no_space(OSError(28, "No space left on device"), tmp_path)
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert ckpt.is_no_space(wrapped, tmp_path)
    assert not ckpt.is_no_space(RuntimeError("unexpected pos 576 vs 534"), tmp_path)  # tmp_path has room
    assert not ckpt.is_no_space(None, tmp_path)
    message = ckpt.save_failure_message(tmp_path / "step_00000008", OSError(28, "No space left on device"), True,
                                        None)
    assert "saving checkpoint" in message and "step_00000008" in message and "no space left on device" in message


# -- real runs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 8-step run that keeps both its checkpoints (steps 4 and 8)."""
    run_dir = tmp_path_factory.mktemp("integrity") / "uninterrupted"
    result = pretrain(run_dir, "train.keep_checkpoints=2")
    assert result.returncode == 0, result.stderr[-4000:]
    assert [info.step for info in ckpt.complete_checkpoints(run_dir)] == [EVERY, STEPS]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_resume_falls_back_past_a_damaged_shard_and_retraces_the_run(reference, tmp_path, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shard = ckpt.step_dir(run_dir, STEPS) / ckpt.DS_TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
    resumed = pretrain(run_dir, "train.keep_checkpoints=2")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    said = f"checkpoint {ckpt.step_dir(run_dir, STEPS)} is not complete: {shard}"
    assert said in resumed.stderr and f"resuming from {ckpt.step_dir(run_dir, EVERY)}" in resumed.stderr
    assert f"resumed from step {EVERY}" in resumed.stderr
    assert step_losses(run_dir) == step_losses(reference)
    assert same_weights(exported(run_dir), exported(reference))
    assert [info.step for info in ckpt.complete_checkpoints(run_dir)] == [EVERY, STEPS]


def mount_tmpfs(path: Path, size: str, remount: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    options = f"remount,size={size}" if remount else f"size={size}"
    command = ["mount", "-t", "tmpfs", "-o", options, f"avbert-{uuid.uuid4().hex[:8]}", str(path)]
    return shutil.which("mount") is not None and subprocess.run(command, capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 15 MiB tmpfs: one checkpoint of the tiny run (9.3 MiB) fits, a second one beside it does not."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "15m"):
        pytest.skip("mounting a tmpfs is not permitted here")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_a_save_stops_clearly_and_keeps_the_previous_checkpoint(reference, small_disk):
    run_dir = small_disk / "run"
    full = pretrain(run_dir, "train.keep_checkpoints=1")
    assert full.returncode == 1, full.stderr[-4000:]
    partial = ckpt.step_dir(run_dir, STEPS)
    final = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert final, full.stderr[-4000:]
    assert f"saving checkpoint {partial} failed: no space left on device" in final[0]
    assert f"the latest complete checkpoint is still {ckpt.step_dir(run_dir, EVERY)} (step {EVERY})" in final[0]
    assert not partial.exists()  # removed, so it can neither be taken for complete nor keep the disk full
    point = ckpt.resume_point(run_dir)
    assert point.info.step == EVERY and not point.rejected
    assert read_status(run_dir)["state"] == "failed"
    assert not (run_dir / "export").exists()

    assert mount_tmpfs(small_disk, "40m", remount=True)
    resumed = pretrain(run_dir, "train.keep_checkpoints=1")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {EVERY}" in resumed.stderr
    assert step_losses(run_dir) == step_losses(reference)
    assert same_weights(exported(run_dir), exported(reference))
    assert [info.step for info in ckpt.complete_checkpoints(run_dir)] == [STEPS]
