"""Benchmark the suite and write benchmarks/results.json and BENCHMARKS.md.

    python tools/bench.py                          # every section (about 3-6 min on 2 CPU cores)
    python tools/bench.py --only layer attention   # some sections
    python tools/bench.py --quick --out-json r.json --out-md B.md   # small sizes, a smoke run
    python tools/bench.py --only planner gpu --merge   # rerun sections, keep the others' figures

Sections: ``layer`` (lowrank against dense shared Transformer layer, paper
width), ``attention`` (SDPA against matmul-softmax), ``tiny_step`` (the tiny
model's pretraining step, plain against checkpointing), ``zero`` (optimizer
state per rank, ZeRO-2 against stage 0 on 2 ranks), ``planner`` (the memory
planner against measured peaks) and ``gpu`` (the paper-scale step; rows say
"not measured (no GPU)" without CUDA). Comparisons are timed side by side and
reported as the median of per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("layer", "attention", "tiny_step", "zero", "planner", "gpu")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per comparison (median reported)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: all cores on an idle machine, 1 when it is loaded)")
    parser.add_argument("--quick", action="store_true", help="small shapes and 2 repeats: checks the tool runs")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the --only sections in the existing --out-json and keep the others "
                             "(the rerun is listed in the header with its own date, commit and load)")
    parser.add_argument("--out-json", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--out-md", type=Path, default=ROOT / "BENCHMARKS.md")
    return parser.parse_args(argv)


def layer_shape(quick: bool):
    from avbert.bench.layers import LayerShape

    return LayerShape(width=64, ffn=128, heads=4, rank=16, clips=2, batch=2) if quick else LayerShape()


def tiny_step_config(quick: bool):
    from avbert.config import load_config

    batch = 2 if quick else 16
    return load_config(None, ["model.preset=tiny", "data.preset=tiny", "train.precision=fp32",
                              f"data.batch_size={batch}"])


def run_section(name: str, args) -> dict:
    """One section's record."""
    from avbert.bench import attention, gpu, layers, memory, step, zero_state
    from avbert.bench.timing import TimingPlan

    repeats = 2 if args.quick else args.repeats
    if name == "layer":
        return layers.run(layer_shape(args.quick), TimingPlan(warmup=2, repeats=repeats, inner=1 if args.quick else 2))
    if name == "attention":
        return attention.run(layer_shape(args.quick), TimingPlan(warmup=5, repeats=repeats, inner=50))
    if name == "tiny_step":
        return step.run_tiny(tiny_step_config(args.quick), TimingPlan(warmup=2, repeats=repeats, inner=1))
    if name == "zero":
        return zero_state.run(world_size=2, batch=2)
    if name == "planner":
        return memory.run(batch=4 if args.quick else 16, rss_check=not args.quick)
    return gpu.run(TimingPlan(warmup=3, repeats=repeats, inner=3))


def choose_threads(requested: int) -> tuple[int, str]:
    """Threads for the CPU sections, and why. With other processes loading the
    CPU, multi-threaded kernels stall at every OpenMP barrier (a tiny step went
    from 0.15 s to 2-7 s at load 9 on 2 cores), so a loaded machine gets one."""
    import torch

    if requested:
        return requested, "requested with --threads"
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load > cores / 2:
        return 1, f"1-min load {load:.1f} on {cores} cores: one thread avoids OpenMP oversubscription"
    return torch.get_num_threads(), f"1-min load {load:.1f} on {cores} cores: all cores"


def run_all(args) -> dict:
    from rich.console import Console

    from avbert.bench.report import environment, load_average

    console = Console(stderr=True)
    results = {"environment": environment(), "load_average": {"start": load_average()},
               "quick": args.quick, "cpu": {}, "sections": list(args.only), "section_s": {}}
    start = time.perf_counter()
    for name in args.only:
        console.log(f"[bold]{name}[/bold] ...")
        began = time.perf_counter()
        record = run_section(name, args)
        if name == "gpu":
            results["gpu"] = record
        else:
            results["cpu"][name] = record
        results["section_s"][name] = time.perf_counter() - began
        console.log(f"{name} done in {results['section_s'][name]:.0f} s")
    results["duration_s"] = time.perf_counter() - start
    results["load_average"]["end"] = load_average()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from avbert.bench.markdown import render
    from avbert.bench.report import merge_results, targets, write_results

    threads, reason = choose_threads(args.threads)
    torch.set_num_threads(threads)
    results = run_all(args)
    results["threads"] = {"count": threads, "reason": reason}
    took = results["duration_s"]
    if args.merge:
        results = merge_results(json.loads(args.out_json.read_text()), results)
    results["targets"] = targets(results)
    write_results(results, args.out_json)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(render(results))
    print(f"wrote {args.out_json} and {args.out_md} in {took / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
