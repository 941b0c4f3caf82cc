"""Training building blocks without a training run: lr schedule, DeepSpeed
config, the resumable data order, checkpoint completeness rules, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
import numpy as np
from torch.utils.data import DataLoader, Dataset, default_collate

from avbert.config import load_config
from avbert.data.resumable import INLINE_BYTES, ResumableLoader, collate, epoch_order, rank_shard
from avbert.train import checkpoint as ckpt
from avbert.train import reshard
from avbert.train.ds_config import REDUCE_BUCKET_ELEMENTS, build_ds_config, build_optimizer, parameter_groups
from avbert.train.metrics import IntervalMeans, MetricsFile, combine_counts, read_metrics
from avbert.train.schedule import lr_at, set_lr


# -- learning-rate schedule ------------------------------------------------------------------------
def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    optim = load_config(None, ["optim.lr=1.0", "optim.min_lr=0.1", "optim.warmup_steps=4"]).optim
    lrs = [lr_at(step, 20, optim) for step in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert lr_at(20, 20, optim) == pytest.approx(0.1)
    assert lr_at(500, 20, optim) == pytest.approx(0.1)


def test_lr_without_warmup_starts_at_peak():
    optim = load_config(None, ["optim.lr=0.5", "optim.warmup_steps=0"]).optim
    assert lr_at(0, 10, optim) == pytest.approx(0.5)


def test_set_lr_writes_every_group():
    opt = build_optimizer(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), load_config().optim)
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]


# -- DeepSpeed config and optimizer --------------------------------------------------------------------
def test_ds_config_carries_batch_geometry_stage_precision_and_clipping():
    cfg = load_config(None, ["data.batch_size=4", "train.grad_accum=3", "train.zero_stage=3",
                             "train.precision=bf16", "optim.grad_clip=0.5"])
    ds = build_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 24
    assert ds["zero_optimization"] == {"stage": 3, "reduce_bucket_size": REDUCE_BUCKET_ELEMENTS}
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}  # fp32 weights, bf16 compute
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "scheduler" not in ds  # torch AdamW passed in, lr set by the loop


def test_ds_config_fp32_disables_autocast():
    ds = build_ds_config(load_config(None, ["train.precision=fp32"]), world_size=1)
    assert ds["torch_autocast"]["enabled"] is False and ds["bf16"] == {"enabled": False}


def test_optimizer_is_torch_adamw_without_decay_on_biases_and_norms():
    module = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optim = load_config(None, ["optim.weight_decay=0.05", "optim.betas=[0.8, 0.9]"]).optim
    opt = build_optimizer(module, optim)
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = parameter_groups(module, 0.05)
    assert {id(p) for p in decay["params"]} == {id(module[0].weight), id(module[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_the_head_has_its_own_rate_and_decay_under_the_schedule():
    """The released fine-tuning recipes: Adam, the head at 0.03 and the backbone at 1e-4, each
    scaled by the same warm-up and decay."""
    module = nn.ModuleDict({"model": nn.Linear(4, 8), "head": nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2))})
    optim = load_config(None, ["optim.optimizer=adam", "optim.lr=0.0001", "optim.head_lr=0.03",
                               "optim.weight_decay=0.01", "optim.head_weight_decay=0.000005",
                               "optim.warmup_steps=0", "optim.min_lr=0"]).optim
    opt = build_optimizer(module, optim)
    assert type(opt) is torch.optim.Adam
    set_lr(opt, lr_at(0, 100, optim))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    head, body = by_param[id(module["head"][1].weight)], by_param[id(module["model"].weight)]
    assert (head["lr"], head["weight_decay"]) == (pytest.approx(0.03), 0.000005)
    assert (body["lr"], body["weight_decay"]) == (pytest.approx(0.0001), 0.01)
    assert by_param[id(module["head"][1].bias)]["weight_decay"] == 0.0
    set_lr(opt, lr_at(50, 100, optim))  # half-way down the cosine: both at half their peak
    assert (head["lr"], body["lr"]) == (pytest.approx(0.015), pytest.approx(0.00005))


def test_linear_schedule_decays_in_a_straight_line():
    optim = load_config(None, ["optim.lr=1.0", "optim.min_lr=0", "optim.warmup_steps=0",
                               "optim.schedule=linear"]).optim
    assert [lr_at(step, 4, optim) for step in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


# -- resumable, sharded data order ------------------------------------------------------------------------
class Numbers(Dataset):
    """Item i is i; optionally reports one skipped file for every 5th item."""

    def __init__(self, n: int, report_skips: bool = False):
        self.n, self.report_skips = n, report_skips

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        item = {"index": torch.tensor(i)}
        if self.report_skips:
            item["skipped/decode"] = int(i % 5 == 0)
        return item


def take(loader, count):
    return [next(loader)["index"].tolist() for _ in range(count)]


def test_epoch_order_is_seeded_and_changes_per_epoch():
    assert torch.equal(epoch_order(50, 0, seed=1), epoch_order(50, 0, seed=1))
    assert not torch.equal(epoch_order(50, 0, seed=1), epoch_order(50, 1, seed=1))
    assert not torch.equal(epoch_order(50, 0, seed=1), epoch_order(50, 0, seed=2))


def test_rank_shards_are_disjoint_equal_sized_and_cover_all_but_the_tail():
    order = epoch_order(23, 0, seed=0)
    shards = [rank_shard(order, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7]
    flat = torch.cat(shards).tolist()
    assert len(set(flat)) == 21 and set(flat) <= set(range(23))


def test_loader_runs_over_epochs_and_resumes_mid_epoch_exactly():
    reference = ResumableLoader(Numbers(40), batch_size=4, rank=1, world_size=2, seed=3)
    expected = take(reference, 12)  # 5 batches per epoch: crosses two epoch boundaries
    assert sorted(sum(expected[:5], [])) == sorted(rank_shard(epoch_order(40, 0, 3), 1, 2).tolist())
    first = ResumableLoader(Numbers(40), batch_size=4, rank=1, world_size=2, seed=3)
    head = take(first, 7)
    state = json.loads(json.dumps(first.state_dict()))  # stored in a JSON marker
    assert state["epoch"] == 1 and state["position"] == 2
    resumed = ResumableLoader(Numbers(40), batch_size=4, rank=1, world_size=2, seed=3)
    resumed.load_state_dict(state)
    assert head + take(resumed, 5) == expected


def test_loader_with_workers_gives_the_same_order():
    plain = take(ResumableLoader(Numbers(32), batch_size=4, seed=0), 10)
    workers = take(ResumableLoader(Numbers(32), batch_size=4, seed=0, num_workers=2), 10)
    assert plain == workers


class Mixed(Dataset):
    """Items with small fields of every kind a dataset returns, one large tensor and a string."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"index": torch.tensor(i), "valid": torch.tensor([True, i % 2 == 0]), "weight": i / 2, "count": i,
                "label": torch.full((3,), i, dtype=torch.float32), "name": f"v{i}",
                "pixels": torch.full((INLINE_BYTES // 2,), i, dtype=torch.uint8)}


def test_worker_batches_carry_small_fields_inline_and_arrive_as_default_collate_makes_them():
    expected = default_collate([Mixed()[i] for i in range(4)])
    sent = next(iter(DataLoader(Mixed(), batch_size=4, num_workers=1, collate_fn=collate)))
    assert {key for key, value in sent.items() if isinstance(value, np.ndarray)} == {
        "index", "valid", "weight", "count", "label"}
    assert torch.is_tensor(sent["pixels"])  # 128 KiB: a shared-memory tensor
    assert collate([Mixed()[i] for i in range(4)])["index"].dtype == torch.int64  # no worker: default_collate
    for workers in (0, 1):
        batch = next(ResumableLoader(Mixed(), batch_size=4, shuffle=False, num_workers=workers))
        assert list(batch) == list(expected)
        for key, value in expected.items():
            if torch.is_tensor(value):
                assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
            else:
                assert batch[key] == value, key


def test_loader_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(ResumableLoader(Numbers(16), batch_size=4, seed=0, num_workers=1), 6)
    assert torch.equal(torch.rand(3), expected)


def test_loader_counts_skipped_items_reported_by_the_dataset():
    loader = ResumableLoader(Numbers(20, report_skips=True), batch_size=5, shuffle=False)
    batch = next(loader)
    assert "skipped/decode" not in batch
    take(loader, 3)
    assert loader.skipped == {"skipped/decode": 4}
    restored = ResumableLoader(Numbers(20, report_skips=True), batch_size=5, shuffle=False)
    restored.load_state_dict(loader.state_dict())
    assert restored.skipped == {"skipped/decode": 4}


def test_loader_refuses_a_state_from_another_world_size():
    state = ResumableLoader(Numbers(16), batch_size=2, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world size 2"):
        ResumableLoader(Numbers(16), batch_size=2, world_size=1).load_state_dict(state)


def test_loader_refuses_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="do not fill one batch"):
        ResumableLoader(Numbers(5), batch_size=4, world_size=2)


# -- checkpoint completeness -----------------------------------------------------------------------------------
def fake_checkpoint(run_dir, step, world_size=2, zero_stage=2, ranks=None, valid=True):
    path = ckpt.step_dir(run_dir, step)
    path.mkdir(parents=True)
    for rank in range(world_size) if ranks is None else ranks:
        marker = {"step": step, "world_size": world_size, "zero_stage": zero_stage, "rank": rank, "loader": {}}
        (path / f"rank_{rank}.json").write_text(json.dumps(marker) if valid else '{"step": ')
    return path


def test_checkpoint_missing_a_rank_marker_is_ignored(tmp_path):
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20, ranks=[0])
    latest = ckpt.latest_complete(tmp_path)
    assert latest.step == 10 and latest.world_size == 2 and latest.zero_stage == 2


def test_truncated_marker_is_ignored(tmp_path):
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20, valid=False)
    assert ckpt.latest_complete(tmp_path).step == 10


def test_markers_that_disagree_are_ignored(tmp_path):
    path = fake_checkpoint(tmp_path, 10)
    marker = json.loads((path / "rank_1.json").read_text())
    (path / "rank_1.json").write_text(json.dumps({**marker, "step": 11}))
    assert ckpt.latest_complete(tmp_path) is None


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    for step in (5, 30, 100):
        fake_checkpoint(tmp_path, step)
    assert [info.step for info in ckpt.complete_checkpoints(tmp_path)] == [5, 30, 100]
    assert ckpt.latest_complete(tmp_path).step == 100
    assert ckpt.latest_complete(tmp_path / "nothing") is None


@pytest.mark.parametrize("world_size,zero_stage", [(1, 2), (2, 3), (4, 1)])
def test_resume_with_other_world_size_or_stage_is_refused_naming_both(tmp_path, world_size, zero_stage):
    fake_checkpoint(tmp_path, 10, world_size=2, zero_stage=2)
    info = ckpt.latest_complete(tmp_path)
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        reshard.check_compatible(info, world_size, zero_stage)
    text = str(err.value)
    assert "world size 2 and ZeRO stage 2" in text
    assert f"world size {world_size} and ZeRO stage {zero_stage}" in text
    reshard.check_compatible(info, 2, 2)


def test_prune_keeps_newest_complete_and_deletes_only_older(tmp_path):
    for step in (10, 20, 30):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 15, ranks=[0])  # an interrupted save, older than the newest
    fake_checkpoint(tmp_path, 40, ranks=[1])  # a save still in progress
    ckpt.prune(tmp_path, keep=2)
    names = sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir())
    assert names == ["step_00000020", "step_00000030", "step_00000040"]


def test_prune_without_complete_checkpoint_deletes_nothing(tmp_path):
    fake_checkpoint(tmp_path, 10, ranks=[0])
    assert ckpt.prune(tmp_path, keep=1) == []
    assert ckpt.step_dir(tmp_path, 10).exists()


def test_fault_point_is_inert_unless_named(monkeypatch):
    monkeypatch.delenv(ckpt.FAULT_ENV, raising=False)
    ckpt.fault_point("before_marker", 3, 0)
    monkeypatch.setenv(ckpt.FAULT_ENV, "before_marker@3:1")
    ckpt.fault_point("before_marker", 3, 0)  # another rank
    ckpt.fault_point("before_marker", 4, 1)  # another step
    ckpt.fault_point("after_checkpoint", 3, 1)  # another point


def test_fill_shared_aliases_restores_every_name_of_a_reused_module():
    layer = nn.Linear(2, 2)
    module = nn.Sequential(layer, nn.ReLU(), layer)
    partial = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}
    full = ckpt.fill_shared_aliases(partial, module)
    assert set(full) == set(module.state_dict())
    module.load_state_dict(full)


# -- metrics ---------------------------------------------------------------------------------------------------------
def test_interval_means_average_since_last_reduce():
    means = IntervalMeans()
    means.add({"loss": torch.tensor(1.0), "cpp/acc": torch.tensor(0.5)})
    means.add({"loss": torch.tensor(3.0), "cpp/acc": torch.tensor(1.0)})
    assert means.reduce() == {"cpp/acc": 0.75, "loss": 2.0}
    means.add({"loss": torch.tensor(5.0)})
    assert means.reduce() == {"loss": 5.0}


def test_combine_counts_sums_clips_and_skips_and_takes_peak_memory():
    per_rank = [{"clips": 40, "skipped": {"skipped": 1, "skipped/decode": 2}, "peak_mem_mb": 10.0},
                {"clips": 60, "skipped": {"skipped/decode": 1}, "peak_mem_mb": 12.0}]
    out = combine_counts(per_rank, seconds=2.0)
    assert out == {"perf/clips_per_s": 50.0, "perf/peak_mem_mb": 12.0, "data/skipped": 1, "data/skipped/decode": 3}


def test_metrics_file_truncates_steps_past_a_resumed_checkpoint(tmp_path):
    metrics = MetricsFile(tmp_path, enabled=True)
    for step in range(1, 6):
        metrics.write({"step": step, "loss": float(step)})
    with metrics.path.open("a") as handle:
        handle.write('{"step": 6, "lo')  # the half-written line of a killed run
    metrics.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_speed_switches_reach_the_model_in_pretraining_and_downstream():
    from avbert.train.downstream import load_backbone
    from avbert.train.pretrain import build_pretrainer

    cfg = load_config(None, ["model.preset=tiny", "train.channels_last=true", "train.activation_checkpointing=true"])
    for model in (build_pretrainer(cfg).model, load_backbone(cfg)[0]):
        assert model.visual_cnn.memory_format == torch.channels_last_3d
        assert model.audio_cnn.memory_format == torch.channels_last
        switches = [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        assert switches and all(switches)
    plain = build_pretrainer(load_config(None, ["model.preset=tiny"])).model
    assert plain.visual_cnn.memory_format == torch.contiguous_format
    assert not any(m.gradient_checkpointing for m in plain.modules() if hasattr(m, "gradient_checkpointing"))
