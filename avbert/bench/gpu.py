"""The paper-scale pretraining step on a GPU: time, clips/s, peak memory, MFU.

Paper scale is the ``paper`` model and data presets (3D ResNet-50 on 32 x
112 x 112 frames, 2D ResNet-50 on 80 x 128 log-mel, T = 10 clips, the three
Transformers) under bf16 autocast, on synthetic tensors already on the GPU,
so the figure is the model's own speed, not the loader's.

Model FLOPs utilisation: the FLOPs of one forward + backward pass counted by
``torch.utils.flop_counter.FlopCounterMode`` (``step.count_model_flops``:
convolutions and matmuls, no recomputation, so checkpointing variants are
credited with the same work), divided by the step time and the GPU's dense
bf16 peak from ``PEAK_BF16_TFLOPS``.

The variants toggle ``channels_last_3d``, ``torch.compile`` and activation
checkpointing, each against the plain baseline, timed side by side in one
process. Peak memory is each variant's own: the bytes it keeps resident plus
the peak its step allocates above everything resident, i.e. what
``torch.cuda.max_memory_allocated`` would read with that variant alone.
The batch is the planner's largest batch for the card (scaled by
``BATCH_FRACTION`` because every variant's model and optimizer stay resident
for the interleaved timing), halved on an out-of-memory error.

Without a CUDA device ``run`` measures nothing and every row says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch

from avbert.bench.step import StepOptions, build_step, clips_per_step, count_model_flops
from avbert.bench.timing import TimingPlan, time_interleaved
from avbert.config import Config

NOT_MEASURED = "not measured (no GPU)"
MFU_TARGET = 0.40  # on an H100, >= 40% MFU for the full paper-scale step
BATCH_FRACTION = 0.8
MAX_BATCH = 32

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, matched in order
# against torch.cuda.get_device_name(): specific names before generic ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)

VARIANTS = (
    StepOptions("baseline"),
    StepOptions("channels_last_3d", channels_last=True),
    StepOptions("compile", compile=True),
    StepOptions("activation_checkpointing", checkpointing=True),
    StepOptions("all_three", checkpointing=True, channels_last=True, compile=True),
)


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a GPU by name, or None when it is not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def paper_config(batch: int = 8) -> Config:
    from avbert.config import load_config

    return load_config(None, ["model.preset=paper", "data.preset=paper", "train.precision=bf16",
                              "train.zero_stage=0", f"data.batch_size={batch}"])


def choose_batch(cfg: Config, gpu_memory: int) -> int:
    """The planner's largest batch for a plain stage-0 loop, scaled down for resident variants."""
    from avbert.planning.memory import plan

    largest = plan(cfg, gpu_memory, world_size=1).max_batch
    return max(1, min(MAX_BATCH, int(largest * BATCH_FRACTION)))


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def allocated(device: torch.device) -> int:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0


def step_peak(step: Callable[[], None], device: torch.device) -> Optional[int]:
    """max_memory_allocated over one step above what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        step()
        return None
    torch.cuda.synchronize()
    before = allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated(device)) - before


def build_variants(cfg: Config, variants: tuple[StepOptions, ...], device: torch.device) -> dict:
    """Step closures of every variant that builds and runs, with the bytes each keeps
    resident (weights, optimizer state, batch); failures are kept as text."""
    steps, resident, failures = {}, {}, {}
    for options in variants:
        before = allocated(device)
        try:
            _, step = build_step(cfg, options, device)
            step()  # first call: compilation, cuDNN autotuning, optimizer state
            steps[options.name] = step
            resident[options.name] = allocated(device) - before
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # a variant that fails (e.g. compile) is reported, not fatal
            failures[options.name] = f"failed: {type(err).__name__}: {str(err)[:300]}"
    return {"steps": steps, "resident": resident, "failures": failures}


def peak_memory(built: dict, device: torch.device) -> dict[str, Optional[int]]:
    """Each variant's peak as if it were alone on the GPU: its resident bytes plus
    the peak its step allocates above everything resident (all variants stay
    resident for the interleaved timing, and allocated bytes add up)."""
    peaks = {}
    for name, step in built["steps"].items():
        above = step_peak(step, device)
        peaks[name] = None if above is None else built["resident"][name] + above
    return peaks


def measure_variants(cfg: Config, device: torch.device, plan: TimingPlan,
                     variants: tuple[StepOptions, ...] = VARIANTS) -> dict:
    """Time, clips/s and peak memory of each variant, interleaved; FLOPs counted once."""
    built = build_variants(cfg, variants, device)
    steps = built["steps"]
    peaks = peak_memory(built, device)
    timings = time_interleaved(steps, plan, sync=_sync(device))
    flops = count_model_flops(cfg)
    peak_flops = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = {}
    base = timings.get("baseline")
    for name, timing in timings.items():
        seconds = timing.median
        rows[name] = {
            "step_s": seconds, "samples_s": timing.samples, "clips_per_s": clips_per_step(cfg) / seconds,
            "peak_memory_bytes": peaks[name],
            "mfu": flops / seconds / peak_flops if peak_flops else None,
            "time_vs_baseline": (statistics_ratio(base.samples, timing.samples) if base else None),
        }
    rows.update({name: {"error": text} for name, text in built["failures"].items()})
    return {"batch": cfg.data.batch_size, "flops_per_step": flops, "peak_bf16_flops": peak_flops, "variants": rows}


def statistics_ratio(baseline: list[float], candidate: list[float]) -> float:
    """Median of the per-repeat ratios candidate / baseline."""
    import statistics

    return statistics.median(c / b for b, c in zip(baseline, candidate))


def planner_check(cfg: Config, rows: dict, gpu_memory: int) -> dict:
    """Planner prediction against the measured peaks (baseline and checkpointing)."""
    from avbert.planning.memory import plan

    out = {}
    for name, ckpt in (("baseline", False), ("activation_checkpointing", True)):
        measured = rows.get(name, {}).get("peak_memory_bytes")
        cell = replace(cfg, train=replace(cfg.train, activation_checkpointing=ckpt))
        predicted = plan(cell, gpu_memory, world_size=1).peak
        out[name] = {"predicted_bytes": predicted, "measured_bytes": measured,
                     "predicted_over_measured": predicted / measured if measured else None}
    return out


def measure_largest_batch(device: torch.device, plan: TimingPlan, batch: int) -> tuple[Config, dict]:
    """``measure_variants`` at ``batch``, halving it after an out-of-memory error."""
    import gc

    while True:
        cfg = paper_config(batch)
        try:
            return cfg, measure_variants(cfg, device, plan)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        gc.collect()  # outside the handler, so the failed attempt's tensors are released
        torch.cuda.empty_cache()
        batch = max(1, batch // 2)


def offline_figures() -> dict:
    """What is known without a GPU: the counted FLOPs of a paper-scale video
    (forward + backward) and the throughput that 40% MFU on an H100 SXM means."""
    flops_per_video = count_model_flops(paper_config(1))
    h100 = peak_bf16_flops("H100")
    videos_per_s = MFU_TARGET * h100 / flops_per_video
    clips = paper_config(1).data.clips
    return {"flops_per_video": flops_per_video, "h100_peak_bf16_flops": h100,
            "mfu_target": MFU_TARGET, "videos_per_s_at_target": videos_per_s,
            "clips_per_s_at_target": videos_per_s * clips}


def run(plan: TimingPlan) -> dict:
    """The paper-scale rows: measured on a CUDA device, else marked not measured."""
    if not torch.cuda.is_available():
        return {"available": False, "note": NOT_MEASURED, "offline": offline_figures()}
    device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True
    gpu_memory = torch.cuda.get_device_properties(device).total_memory
    cfg, result = measure_largest_batch(device, plan, choose_batch(paper_config(), gpu_memory))
    result.update(available=True, device=torch.cuda.get_device_name(device), gpu_memory_bytes=gpu_memory,
                  timing_plan=plan.to_dict(), planner=planner_check(cfg, result["variants"], gpu_memory),
                  offline=offline_figures())
    return result
