"""Predict the per-GPU peak memory of a pretraining config and whether it fits.

    python tools/plan.py CONFIG [--gpu-memory 80GB] [--world-size N] [key.path=value ...]
    python tools/plan.py experiments/smoke.yaml train.zero_stage=2 data.batch_size=16
    python tools/plan.py none model.preset=paper data.preset=paper --format json

CONFIG is a YAML file, or ``none`` for the defaults. The prediction adds model
states (by ZeRO stage, world size and precision), DeepSpeed's buckets, the
batch tensors and the activations counted on the meta device (see
``avbert/planning/memory.py`` for the method), and gives the largest per-GPU
batch that fits. The exit status is 0 when the config fits, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import sys

from avbert.config import load_config
from avbert.planning.memory import MemoryPlan, format_bytes, parse_memory, plan

ROWS = (
    ("weights", "weights"), ("gradients", "gradients"), ("optimizer state", "optimizer"),
    ("ZeRO buckets", "zero_buffers"), ("batch tensors", "inputs"), ("activations", "activations"),
    ("predicted peak", "peak"), ("usable GPU memory", "usable"),
)


def print_plan(result: MemoryPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    caption = (f"batch {result.batch_size} x {result.clips} clips per GPU, {result.precision}, "
               f"ZeRO-{result.zero_stage} on {result.world_size} GPU(s), "
               f"activation checkpointing {'on' if result.activation_checkpointing else 'off'}")
    table = Table(title=f"{result.name}: predicted per-GPU memory", caption=caption)
    table.add_column("per GPU")
    table.add_column("bytes", justify="right")
    for label, key in ROWS:
        if key == "gradients" and not result.activation_checkpointing:
            label = "gradients (not held at the peak)"
        table.add_row(label, format_bytes(getattr(result, key)))
    console = Console()
    console.print(table)
    console.print(f"{result.parameters / 1e6:.2f}M parameters. {result.summary()}")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file, or 'none' for the defaults")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides")
    parser.add_argument("--gpu-memory", default="80GB", help="memory of one GPU (default 80GB)")
    parser.add_argument("--world-size", type=int, default=1, help="number of GPUs (data-parallel ranks)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = None if args.config.lower() == "none" else args.config
    cfg = load_config(path, args.overrides)
    result = plan(cfg, parse_memory(args.gpu_memory), args.world_size)
    if args.format == "json":
        print(json.dumps(result.to_dict()))
    else:
        print_plan(result)
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
