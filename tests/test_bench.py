"""The benchmark functions run at tiny sizes and give well-formed figures (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avbert.bench import attention, gpu, layers, step
from avbert.bench.markdown import render
from avbert.bench.report import targets
from avbert.bench.timing import TimingPlan, compare
from avbert.config import load_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = TimingPlan(warmup=1, repeats=2, inner=1)
SMALL = layers.LayerShape(width=32, ffn=64, heads=4, rank=8, clips=2, batch=2)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine multi-threaded kernels stall on
    each other (see tools/bench.py choose_threads); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(batch: int = 2):
    return load_config(None, ["model.preset=tiny", "data.preset=tiny", "train.precision=fp32",
                              f"data.batch_size={batch}"])


def check_comparison(record: dict) -> None:
    assert record["repeats"] == 2 and len(record["baseline"]["samples_s"]) == 2
    assert record["baseline"]["median_s"] > 0 and record["candidate"]["median_s"] > 0
    assert math.isfinite(record["ratio"]) and record["round_ratio_min"] <= record["ratio"] <= record["round_ratio_max"]


def test_compare_interleaves_and_reports_median_ratio():
    calls = []
    result = compare("x", ("a", lambda: calls.append("a")), ("b", lambda: calls.append("b")),
                     TimingPlan(warmup=0, repeats=3, inner=1))
    assert calls == ["a", "b", "b", "a", "a", "b"]  # alternating order, so drifts in load hit both alike
    record = result.to_dict()
    assert record["repeats"] == 3 and len(record["candidate"]["samples_s"]) == 3
    assert record["round_ratio_min"] <= record["ratio"] <= record["round_ratio_max"]


def test_layer_bench_small():
    record = layers.run(SMALL, QUICK)
    check_comparison(record["comparison"])
    breakdown = record["breakdown"]
    assert breakdown["lowrank"]["parameters"] < breakdown["all"]["parameters"]
    assert 0 < breakdown["flops_ratio"] < 1 and breakdown["lowrank"]["matrix_exp_s"] > 0
    assert record["shape"]["tokens"] == 6 and record["comparison"]["target_ratio"] == 0.8


def test_attention_bench_small():
    record = attention.run(SMALL, QUICK)
    check_comparison(record["comparison"])
    assert record["max_abs_difference"] < 1e-5


def test_tiny_step_bench():
    record = step.run_tiny(tiny_cfg(), QUICK)
    check_comparison(record["comparison"])
    assert record["clips_per_s"] > 0 and record["flops_per_step"] > 0


def test_model_flops_scale_with_batch():
    assert step.count_model_flops(tiny_cfg(4)) == 2 * step.count_model_flops(tiny_cfg(2))


def test_gpu_step_variants_run_on_cpu():
    """The GPU code path, exercised on the CPU at tiny size (no compile: it takes minutes on CPU)."""
    variants = tuple(v for v in gpu.VARIANTS if not v.compile)
    record = gpu.measure_variants(tiny_cfg(), torch.device("cpu"), QUICK, variants)
    assert set(record["variants"]) == {v.name for v in variants}
    for row in record["variants"].values():
        assert row["step_s"] > 0 and row["clips_per_s"] > 0 and row["mfu"] is None
    assert record["flops_per_step"] > 0


def test_peak_table_matches_device_names():
    assert gpu.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_bf16_flops("NVIDIA H200") == 989e12
    assert gpu.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.peak_bf16_flops("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the rows written without a GPU")
def test_gpu_rows_say_not_measured_without_gpu():
    record = gpu.run(QUICK)
    assert record["available"] is False and record["note"] == "not measured (no GPU)"
    assert record["offline"]["flops_per_video"] > 1e12


def test_merge_replaces_only_the_rerun_sections_and_says_so():
    from avbert.bench.report import merge_results

    base = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    rerun = {"sections": ["gpu"], "cpu": {}, "gpu": gpu.run(QUICK), "section_s": {"gpu": 1.0},
             "environment": dict(base["environment"], date="2030-01-01T00:00:00+00:00", git_commit="abc+uncommitted"),
             "load_average": {"start": [0.1], "end": [0.2]}, "threads": {"count": 1, "reason": "test"},
             "duration_s": 6.0, "quick": base.get("quick", False)}
    merged = merge_results(base, rerun)
    assert merged["gpu"] == rerun["gpu"] and merged["cpu"] == base["cpu"]
    assert merged["environment"] == base["environment"] and merged["duration_s"] == base["duration_s"]
    assert merged["reruns"][-1]["sections"] == ["gpu"]
    merged["targets"] = targets(merged)
    text = render(merged)
    assert "- rerun 2030-01-01T00:00:00+00:00, commit `abc+uncommitted`: sections gpu" in text
    assert f"{rerun['gpu']['offline']['flops_per_video'] / 1e12:.2f} TFLOP per video" in text
    with pytest.raises(ValueError, match="quick"):
        merge_results(base, dict(rerun, quick=not rerun["quick"]))


@pytest.mark.slow
def test_zero_state_halves_adam_moments_on_two_ranks():
    from avbert.bench import zero_state

    record = zero_state.run(world_size=2, batch=2)
    for ratio in record["ratios"].values():
        assert abs(ratio["moments"] - 0.5) < 0.01 and ratio["met"]
        assert abs(ratio["optimizer_state"] - 0.75) < 0.01  # ZeRO's fp32 master partition on top
    rank0 = record["per_rank"]["0"]
    assert rank0["fp32/stage2"]["step_peak"] > rank0["fp32/stage0"]["step_peak"]  # the reduction bucket
    # ... of the suite's reduce_bucket_size (5e7 fp32 elements: 200 MB), not DeepSpeed's 5e8 (2 GB)
    from avbert.train.ds_config import REDUCE_BUCKET_ELEMENTS

    bucket = rank0["fp32/stage2"]["step_peak"] - rank0["fp32/stage0"]["step_peak"]
    assert 0.9 * 4 * REDUCE_BUCKET_ELEMENTS < bucket < 1.5 * 4 * REDUCE_BUCKET_ELEMENTS, bucket


@pytest.mark.slow
def test_bench_tool_quick_writes_both_files(tmp_path):
    out_json, out_md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    command = [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--threads", "1",
               "--only", "layer", "attention", "tiny_step", "planner", "gpu",
               "--out-json", str(out_json), "--out-md", str(out_md)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert {"environment", "cpu", "targets", "duration_s"} <= set(results)
    text = out_md.read_text()
    assert text == render(results) and results["targets"] == targets(results)
    for target in results["targets"]:
        assert target["target"] in text
    if not torch.cuda.is_available():
        assert "not measured (no GPU)" in text


def test_gpu_check_without_a_gpu_says_so_and_exits_zero():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "tools" / "gpu_check.py")], capture_output=True, text=True,
                            env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert result.returncode == 0 and "no CUDA GPU" in result.stdout, result.stdout + result.stderr
