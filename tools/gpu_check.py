"""One command that checks the suite's CUDA paths on one GPU, in about eight minutes.

    python tools/gpu_check.py            # writes benchmarks/gpu.json and the GPU rows of BENCHMARKS.md

(a) a short pretraining of the paper preset through the real engine (``python -m
avbert.train pretrain``: bf16 autocast, DeepSpeed ZeRO-2, NCCL, world size 1) on the
built-in synthetic data: the loss must be finite and fall; (b) the same with
``train.compile=true`` and with ``train.channels_last=true``; (c) and (d) the benchmark's
``gpu`` section (``tools/bench.py --only gpu --merge``): the planner's predicted peak
against ``torch.cuda.max_memory_allocated`` at paper scale (within 15%), the paper-scale
step time and MFU. Everything it measured goes to ``benchmarks/gpu.json``, naming the GPU.

Without a CUDA device it says so and exits 0 at once. What to bring to a GPU machine
without a package index is in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The paper model and data presets on a few synthetic videos: long enough for the loss to fall.
ENGINE_RUN = ["model.preset=paper", "data.preset=paper", "data.source=synthetic", "data.synthetic.num_videos=64",
              "data.batch_size=4", "data.num_workers=2", "train.precision=bf16", "train.zero_stage=2",
              "train.device=cuda", "train.steps=30", "train.log_every=5", "train.checkpoint_every=30",
              "optim.lr=0.0003", "optim.warmup_steps=5"]
VARIANTS = {"plain": [], "compile": ["train.compile=true"], "channels_last": ["train.channels_last=true"]}


def engine_check(name: str, extra: list[str], work: Path, timeout: float) -> dict:
    """One pretraining run through the engine: its losses, speed and peak memory, and whether
    the loss is finite and falling (the mean of the last two logged losses below the first)."""
    run_dir = work / name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + len(name))}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "avbert.train", "pretrain", *ENGINE_RUN, *extra,
                             f"train.run_dir={run_dir}"], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    losses = [line["loss"] for line in lines if isinstance(line.get("loss"), (int, float))]
    falling = len(losses) >= 3 and sum(losses[-2:]) / 2 < losses[0]
    out = {"overrides": extra, "exit_code": result.returncode, "seconds": round(time.time() - started, 1),
           "losses": losses, "finite": bool(losses) and all(math.isfinite(x) for x in losses), "falling": falling,
           "clips_per_s": next((line.get("perf/clips_per_s") for line in reversed(lines)
                                if line.get("perf/clips_per_s")), None),
           "peak_mem_mb": max((line.get("perf/peak_mem_mb", 0) for line in lines), default=None)}
    out["ok"] = result.returncode == 0 and out["finite"] and falling
    if result.returncode != 0:
        out["stderr_tail"] = result.stderr[-3000:]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.json"))
    parser.add_argument("--skip-bench", action="store_true", help="only the engine runs (a) and (b)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per engine run")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; nothing to check (run it on a GPU node)")
        return 0
    device = torch.cuda.get_device_name(0)
    print(f"gpu_check on {device}")
    report = {"gpu": device, "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "engine": {}}
    with tempfile.TemporaryDirectory(prefix="avbert-gpu-check-") as work:
        for name, extra in VARIANTS.items():
            report["engine"][name] = engine_check(name, extra, Path(work), args.timeout)
            row = report["engine"][name]
            print(f"  engine {name:>13}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']} s; "
                  f"loss {row['losses'][:1]} -> {row['losses'][-1:]}; peak {row['peak_mem_mb']} MB")
    if not args.skip_bench:
        bench = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--only", "gpu", "--merge"],
                               cwd=ROOT, capture_output=True, text=True)
        report["bench"] = {"exit_code": bench.returncode, "output_tail": bench.stdout[-4000:] + bench.stderr[-2000:]}
        print(bench.stdout[-2000:])
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"gpu_check: wrote {args.out}")
    ok = all(row["ok"] for row in report["engine"].values()) and report.get("bench", {}).get("exit_code", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
