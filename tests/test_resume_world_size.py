"""Resuming a ZeRO-2 pretraining run of the tiny AVBERT at another world size.

A checkpoint written by 2 ranks is resumed by 1 and one written by 1 rank by 2,
through DeepSpeed's universal checkpoint (converted automatically on resume). The
runs are ``python -m avbert.train pretrain`` (under ``torchrun --nproc_per_node 2``
for 2 ranks) on the synthetic data, fp32, as tests/test_resume.py runs them; the
first run is SIGKILLed right after its step-4 checkpoint. A ZeRO-0 run of 2 ranks is
resumed by 1 with a direct load (no conversion). This file is also the
per-rank script that checks what a resumed engine holds
(``python tests/test_resume_world_size.py RUN_DIR OUT_DIR``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from avbert.data.resumable import ResumableLoader, epoch_order
from avbert.train import checkpoint as ckpt
from avbert.train import reshard
from avbert.train.metrics import read_metrics, read_status
from test_resume import rank_env, torchrun

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, BATCH = 8, 4, 8
OVERRIDES = [
    "model.preset=tiny", "data.preset=tiny", "data.synthetic.num_videos=80", f"data.batch_size={BATCH}",
    "train.precision=fp32", "train.zero_stage=2", f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}",
    "train.log_every=1", "train.keep_checkpoints=2", "optim.lr=0.0005", "optim.warmup_steps=2",
]


def launch(nproc: int, *args: str, fault: str | None = None, module: bool = True) -> subprocess.CompletedProcess:
    target = ["-m", "avbert.train", "pretrain"] if module else [str(Path(__file__).resolve())]
    return subprocess.run([*torchrun(nproc), *target, *args], env=rank_env(fault), capture_output=True, text=True,
                          timeout=300)


def pretrain(run_dir: Path, nproc: int, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return launch(nproc, *OVERRIDES, *extra, f"train.run_dir={run_dir}", fault=fault)


def checkpointed_at_4(root: Path, nproc: int, zero_stage: int = 2) -> Path:
    run_dir = root / f"written_by_{nproc}"
    killed = pretrain(run_dir, nproc, f"train.zero_stage={zero_stage}", fault=f"after_checkpoint@{EVERY}")
    assert killed.returncode != 0
    info = ckpt.latest_complete(run_dir)
    assert (info.step, info.world_size, info.zero_stage) == (EVERY, nproc, zero_stage)
    return run_dir


@pytest.fixture(scope="module")
def by_two(tmp_path_factory) -> Path:
    return checkpointed_at_4(tmp_path_factory.mktemp("world_size"), 2)


@pytest.fixture(scope="module")
def by_one(tmp_path_factory) -> Path:
    return checkpointed_at_4(tmp_path_factory.mktemp("world_size"), 1)


@pytest.fixture(scope="module")
def by_two_at_stage_0(tmp_path_factory) -> Path:
    return checkpointed_at_4(tmp_path_factory.mktemp("world_size"), 2, zero_stage=0)


def copy_run(source: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    return run_dir


# -- the data order -------------------------------------------------------------------------------------------
class Indices(Dataset):
    def __len__(self):
        return 96

    def __getitem__(self, i):
        return {"index": torch.tensor(i)}


def consumed(loaders: list[ResumableLoader], batches: int) -> list[int]:
    return [int(i) for loader in loaders for _ in range(batches) for i in next(loader)["index"]]


def markers_of(loaders: list[ResumableLoader], path: Path) -> None:
    path.mkdir(parents=True)
    for rank, loader in enumerate(loaders):
        marker = {"step": 1, "world_size": len(loaders), "zero_stage": 2, "rank": rank,
                  "batch_size": loader.batch_size, "loader": loader.state_dict()}
        (path / f"rank_{rank}.json").write_text(json.dumps(marker))


@pytest.mark.parametrize("old_world,old_position,new_world,repeated", [
    (2, 3, 1, 0), (1, 4, 2, 0), (4, 1, 2, 0), (1, 3, 2, 4), (3, 1, 2, 4),
])
def test_regridded_loaders_finish_the_epoch_without_skipping(tmp_path, old_world, old_position, new_world,
                                                             repeated):
    batch = 4
    old = [ResumableLoader(Indices(), batch, rank, old_world, seed=3) for rank in range(old_world)]
    before = consumed(old, old_position)
    markers_of(old, tmp_path / "ckpt")
    new = []
    for rank in range(new_world):
        loader = ResumableLoader(Indices(), batch, rank, new_world, seed=3)
        state, again = reshard.regrid_loader_state(tmp_path / "ckpt", rank, new_world, batch)
        assert again == repeated
        loader.load_state_dict(state)
        new.append(loader)
    after = consumed(new, new[0].batches_per_epoch - new[0].position)
    order = epoch_order(len(Indices()), 0, seed=3).tolist()
    assert sorted(before) == sorted(order[:len(before)])  # the old ranks consumed a prefix of the order
    usable = len(order) - len(order) % (new_world * batch)
    assert set(order[len(before) - repeated:len(before)]) == set(before) & set(after)  # seen twice
    assert set(before) | set(after) == set(order[:max(usable, len(before))])
    assert len(after) == len(set(after))


def test_stage_3_at_another_world_size_and_another_stage_are_refused(tmp_path):
    info = ckpt.CheckpointInfo(tmp_path / "step_00000004", 4, 2, 3)
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        reshard.resume_mode(info, 1, 3)
    assert "only ZeRO stages 0, 1, 2" in str(err.value) and "Relaunch with world size 2" in str(err.value)
    with pytest.raises(ckpt.CheckpointMismatchError, match="world size 2 and ZeRO stage 3"):
        reshard.resume_mode(info, 2, 2)
    assert reshard.resume_mode(info, 2, 3) == reshard.SAME
    assert reshard.resume_mode(ckpt.CheckpointInfo(info.path, 4, 2, 2), 1, 2) == reshard.UNIVERSAL
    assert reshard.resume_mode(ckpt.CheckpointInfo(info.path, 4, 2, 0), 1, 0) == reshard.DIRECT


# -- real runs ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("written_by,resumed_by,sample", [(2, 1, 64), (1, 2, 32)])
def test_resume_at_another_world_size_continues_the_run(by_two, by_one, tmp_path, written_by, resumed_by, sample):
    source = by_two if written_by == 2 else by_one
    run_dir = copy_run(source, tmp_path)
    resumed = pretrain(run_dir, resumed_by)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    said = (f"resuming {ckpt.step_dir(run_dir, EVERY)} (written by world size {written_by}) with world size "
            f"{resumed_by} (universal load): epoch 0 continues at sample {sample} of its order; no sample of it is "
            f"repeated or skipped")
    assert said in resumed.stderr
    assert f"resumed from step {EVERY}" in resumed.stderr
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records[:EVERY]] == [r["loss"] for r in read_metrics(source)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    final = ckpt.latest_complete(run_dir)
    assert (final.step, final.world_size) == (STEPS, resumed_by)
    assert read_status(run_dir)["state"] == "completed" and (run_dir / "export" / "model.pt").exists()


@pytest.mark.slow
def test_a_zero_0_run_resumes_at_another_world_size_by_a_direct_load(by_two_at_stage_0, tmp_path):
    """At ZeRO stage 0 every rank's optimizer state is whole: 1 rank loads the checkpoint of 2 as
    it is, and the data order goes on as at stage 2."""
    run_dir = copy_run(by_two_at_stage_0, tmp_path)
    resumed = pretrain(run_dir, 1, "train.zero_stage=0")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    said = (f"resuming {ckpt.step_dir(run_dir, EVERY)} (written by world size 2) with world size 1 (direct load): "
            f"epoch 0 continues at sample 64 of its order; no sample of it is repeated or skipped")
    assert said in resumed.stderr
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records[:EVERY]] == [r["loss"] for r in read_metrics(by_two_at_stage_0)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    final = ckpt.latest_complete(run_dir)
    assert (final.step, final.world_size, final.zero_stage) == (STEPS, 1, 0)
    assert read_status(run_dir)["state"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("written_by,resumed_by", [(2, 1), (1, 2)])
def test_resumed_engine_holds_the_checkpoint_state(by_two, by_one, tmp_path, written_by, resumed_by):
    """Weights and norm statistics equal the checkpoint's; Adam's moments, whose sum and sum of
    squares over all partitions do not depend on the partitioning, equal those of the old shards."""
    run_dir = copy_run(by_two if written_by == 2 else by_one, tmp_path)
    out = tmp_path / "out"
    result = launch(resumed_by, str(run_dir), str(out), module=False)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in range(resumed_by):
        report = json.loads((out / f"rank_{rank}.json").read_text())
        assert report["step"] == EVERY
        assert report["differing_weights"] == [] and report["compared_weights"] > 100
        assert report["differing_buffers"] == [] and report["compared_buffers"] > 50
        for key in ("exp_avg", "exp_avg_sq"):
            assert report[key] == pytest.approx(report[f"saved_{key}"], rel=1e-6)
        assert report["adam_steps"] == [EVERY]


def saved_moments(path: Path) -> dict[str, list[float]]:
    """Sum and sum of squares of Adam's moments over every ZeRO shard of a checkpoint."""
    totals = {"exp_avg": [0.0, 0.0], "exp_avg_sq": [0.0, 0.0]}
    for shard in sorted((path / ckpt.DS_TAG).glob("zero_pp_rank_*_optim_states.pt")):
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for group in state["base_optimizer_state"]["state"].values():
            for key, total in totals.items():
                total[0] += float(group[key].double().sum())
                total[1] += float(group[key].double().pow(2).sum())
    return totals


def rank_main(run_dir: str, out_dir: str) -> None:
    """One rank: build the trainer (which resumes), compare its state with the checkpoint's."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from avbert.config import load_config
    from avbert.data.build import build_train_loader
    from avbert.train.distributed import all_reduce_max, setup_distributed
    from avbert.train.engine import Trainer
    from avbert.train.pretrain import build_pretrainer

    cfg = load_config(None, [*OVERRIDES, f"train.run_dir={run_dir}", "stage=pretrain"])
    env = setup_distributed("cpu")
    info = ckpt.latest_complete(run_dir)
    trainer = Trainer(cfg, build_pretrainer(cfg), build_train_loader(cfg, env.rank, env.world_size), env)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(info.path), tag=ckpt.DS_TAG)
    model_states = torch.load(info.path / ckpt.DS_TAG / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    module = trainer.engine.module
    state = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    moments = {}
    optimizer_state = trainer.engine.optimizer.optimizer.state
    for key in ("exp_avg", "exp_avg_sq"):
        local = torch.tensor([sum(float(s[key].double().sum()) for s in optimizer_state.values()),
                              sum(float(s[key].double().pow(2).sum()) for s in optimizer_state.values())],
                             dtype=torch.float64)
        if env.world_size > 1:
            torch.distributed.all_reduce(local)
        moments[key] = local.tolist()
    all_reduce_max(torch.zeros(1))
    report = {
        "step": trainer.step,
        "compared_weights": len(weights),
        "differing_weights": [k for k in weights if not torch.equal(weights[k].float(), state[k].float())],
        "compared_buffers": len(buffers),
        "differing_buffers": [k for k in buffers if not torch.equal(model_states[k], state[k])],
        "adam_steps": sorted({int(s["step"]) for s in optimizer_state.values()}),
        **moments,
        **{f"saved_{key}": value for key, value in saved_moments(info.path).items()},
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, f"rank_{env.rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2])
