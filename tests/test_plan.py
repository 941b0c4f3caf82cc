"""The memory planner: model-state accounting, the activation count, and its
prediction against the measured peak of real training steps on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avbert.config import DataConfig, ModelConfig, load_config
from avbert.models import AVBert
from avbert.planning.activations import activation_model, count_saved
from avbert.planning.measure import measure_in_subprocess
from avbert.planning.memory import (
    DEEPSPEED_BUCKET_DEFAULT, GiB, largest_batch, model_state_bytes, parse_memory, plan, usable_memory, with_batch,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = ["model.preset=tiny", "data.preset=tiny", "train.precision=fp32", "train.zero_stage=0"]


def ds(stage: int, autocast: bool = False, **zero) -> dict:
    return {"zero_optimization": {"stage": stage, **zero}, "torch_autocast": {"enabled": autocast},
            "bf16": {"enabled": False}}


def test_parse_memory_reads_binary_sizes():
    assert parse_memory("80GB") == 80 * GiB
    assert parse_memory("141GiB") == 141 * GiB
    assert parse_memory("512MB") == 512 * 2**20
    assert parse_memory("1024") == 1024
    with pytest.raises(ValueError, match="memory size"):
        parse_memory("eighty")


def test_zero2_halves_optimizer_state_on_two_ranks_and_adds_buckets():
    p = 1_000_000
    stage0 = model_state_bytes(p, 2, ds(0))
    stage2 = model_state_bytes(p, 2, ds(2))
    assert (stage0.weights, stage0.gradients, stage0.optimizer, stage0.buffers) == (4 * p, 4 * p, 8 * p, 0)
    assert stage2.optimizer == 12 * p // 2  # fp32 master partition + Adam moments, over 2 ranks
    assert stage2.gradients == 4 * p // 2
    assert stage2.buffers == DEEPSPEED_BUCKET_DEFAULT * 4
    assert model_state_bytes(p, 2, ds(2, autocast=True)).buffers == 2 * DEEPSPEED_BUCKET_DEFAULT * 4
    assert model_state_bytes(p, 2, ds(2, reduce_bucket_size=1000)).buffers == 4000
    assert model_state_bytes(p, 4, ds(3)).weights == p


def test_the_suite_sets_a_reduction_bucket_the_planner_counts():
    from avbert.train.ds_config import REDUCE_BUCKET_ELEMENTS

    cfg = load_config(overrides=["train.zero_stage=2", "train.precision=bf16"])
    # one bucket in the fp32 weights' dtype per communication dtype (bf16 and fp32 under autocast)
    assert plan(cfg, 80 * GiB, world_size=8).zero_buffers == 2 * REDUCE_BUCKET_ELEMENTS * 4


def test_largest_batch_is_the_last_that_fits():
    assert largest_batch(fixed=10, per_sample=7, usable=80) == 10
    assert largest_batch(fixed=100, per_sample=7, usable=80) == 0


def test_meta_activation_count_matches_real_tensors_on_cpu():
    """The fake-tensor count equals what autograd really saves, within a few percent
    (the fake CUDA device picks CUDA's attention kernel, which saves less)."""
    model_cfg, data = ModelConfig.from_preset("tiny"), DataConfig.from_preset("tiny")
    torch.manual_seed(0)
    real = count_saved(AVBert(model_cfg).train(), data, data.batch_size, second_pass=True).total
    act = activation_model(model_cfg, data, "fp32")  # objective.cpp_input: clean, two passes
    predicted = act.fixed + data.batch_size * act.per_sample
    assert abs(predicted / real - 1) < 0.05


def test_the_clean_cpp_pass_adds_one_more_transformer_pass():
    from avbert.config import ObjectiveConfig

    model_cfg, data = ModelConfig.from_preset("tiny"), DataConfig.from_preset("tiny")
    clean = activation_model(model_cfg, data, "fp32", ObjectiveConfig(cpp_input="clean"))
    masked = activation_model(model_cfg, data, "fp32", ObjectiveConfig(cpp_input="masked"))
    torch.manual_seed(0)
    model = AVBert(model_cfg).train()
    one_pass = count_saved(model, data, 2).total
    transformers_only = count_saved(model, data, 2, second_pass=True).total - one_pass
    assert 0 < transformers_only < one_pass  # the CNNs do not run again
    got = (clean.fixed + 2 * clean.per_sample) - (masked.fixed + 2 * masked.per_sample)
    # The fake CUDA device picks CUDA's attention kernel, which saves less than the CPU's,
    # and attention is a larger part of a Transformer-only pass: 15% here, not 5%.
    assert abs(got / transformers_only - 1) < 0.25


def test_checkpointing_and_bf16_shrink_paper_activations():
    model_cfg, data = ModelConfig.from_preset("paper"), DataConfig.from_preset("paper")
    fp32 = activation_model(model_cfg, data, "fp32")
    bf16 = activation_model(model_cfg, data, "bf16")
    assert 0.45 < bf16.per_sample / fp32.per_sample < 0.55
    assert bf16.per_sample_checkpointed < 0.7 * bf16.per_sample


def test_plan_fits_and_largest_batch_agree():
    cfg = load_config(None, ["model.preset=paper", "data.preset=paper"])
    result = plan(cfg, 80 * GiB, world_size=1)
    assert result.max_batch >= 1
    at_max = plan(with_batch(cfg, result.max_batch), 80 * GiB, world_size=1)
    over = plan(with_batch(cfg, result.max_batch + 1), 80 * GiB, world_size=1)
    assert at_max.fits and not over.fits
    assert at_max.peak <= usable_memory(80 * GiB) < over.peak


def test_plan_tool_prints_json_and_exit_status():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "plan.py"), "none", *TINY_CPU, "--format", "json",
                           "--gpu-memory", "80GB"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["fits"] and record["peak"] > 0 and record["zero_stage"] == 0
    small = subprocess.run([sys.executable, str(ROOT / "tools" / "plan.py"), "none", "--gpu-memory", "2GB"],
                           capture_output=True, text=True, check=False)
    assert small.returncode == 1, small.stderr
    assert "does NOT fit" in small.stdout


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_plan_within_15_percent_of_measured_cpu_peak(checkpointing):
    """A real tiny training step's allocator peak, measured in a fresh process."""
    overrides = [*TINY_CPU, f"train.activation_checkpointing={str(checkpointing).lower()}"]
    predicted = plan(load_config(None, overrides), 80 * GiB, world_size=1).peak
    measured = measure_in_subprocess(overrides[2:], kinds=("allocator",)).allocator_peak
    assert abs(predicted / measured - 1) <= 0.15, (predicted, measured)


def test_dry_run_shows_the_predicted_memory_per_gpu_cell(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "tools" / "launch.py"), str(root / "experiments" / "sharing_ablation.yaml"),
         "--profile", str(root / "slurm" / "profiles" / "paper-8x8.yaml"), "--scale", "tiny", "--dry-run",
         "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "250"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "memory/GPU" in result.stdout
    import re

    predictions = re.findall(r"\d+\.\d+ [KMG]iB fits \(max batch", result.stdout)
    assert len(predictions) == 8, result.stdout  # one prediction per GPU cell
    assert not (tmp_path / "sharing_ablation" / "index.json").exists()  # a dry run writes nothing
