"""Measured peak memory of real pretraining steps on the CPU, to check the planner.

Two measurements of the same training loop (the pretrainer, torch AdamW,
synthetic batch tensors, ``steps`` steps so that a forward pass runs with the
optimizer state already allocated):

* **allocator peak** (the figure the planner is checked against): PyTorch's
  profiler with ``profile_memory=True`` records every allocation of the c10
  CPU allocator with the allocator's running total of allocated bytes; the
  maximum of that total over the loop, which builds the model, the optimizer
  and the batch inside the profiled region, is the peak of live tensor bytes.
  It is the CPU counterpart of ``torch.cuda.max_memory_allocated`` and is
  exact and repeatable (it reads the profiler's event tree, a torch-internal
  API pinned with torch 2.11);
* **RSS peak** (a cross-check that does not rely on the profiler): in a
  fresh subprocess, after one warm-up step, Linux's peak-RSS counter is
  reset (``/proc/self/clear_refs``) and the peak over the next steps minus
  the RSS before them is what a step adds: its activations. The subprocess
  runs with ``MALLOC_MMAP_THRESHOLD_=65536``: by default glibc raises its
  mmap threshold after large frees, later tensors then come from the heap,
  whose freed pages stay resident, and the RSS grows about twice as fast
  with the batch as the live tensors do.

A plain torch loop with AdamW is exactly what DeepSpeed runs at ZeRO stage 0
in fp32 (the client optimizer steps the model's own parameters), so these are
compared with ``plan`` at stage 0, fp32, world size 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from avbert.config import Config

ROOT = Path(__file__).resolve().parents[2]
MMAP_THRESHOLD = 65536  # bytes; a fixed threshold turns off glibc's dynamic one


@dataclass(frozen=True)
class MeasuredPeak:
    allocator_peak: int  # bytes of live tensors at the peak
    rss_peak_delta: int | None  # peak RSS a step adds above the RSS before it, when measured


def _walk(events):
    for event in events:
        yield event
        yield from _walk(event.children)


def allocator_peak(fn: Callable[[], object]) -> int:
    """Peak of the CPU allocator's allocated bytes while ``fn`` runs, above its start."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    tree = prof.profiler.kineto_results.experimental_event_tree()
    totals = [e.extra_fields.total_allocated for e in _walk(tree) if e.tag == _EventType.Allocation]
    return max(totals, default=0)


def build_training(cfg: Config) -> Callable[[], None]:
    """Build the pretrainer, AdamW and a synthetic batch; return one training step."""
    from avbert.models import AVBert
    from avbert.objectives.pretraining import AVBertPretrainer
    from avbert.planning.activations import synthetic_inputs

    torch.manual_seed(cfg.train.seed)
    module = AVBertPretrainer(AVBert(cfg.model), cfg.objective).train()
    module.model.set_gradient_checkpointing(bool(cfg.train.activation_checkpointing))
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.optim.lr)
    video, audio = synthetic_inputs(cfg.data, cfg.data.batch_size, "cpu", fill=True)
    batch = {"video": video, "audio": audio}

    def step() -> None:
        module(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_loop(cfg: Config, steps: int = 3) -> Callable[[], None]:
    """A closure that builds everything and trains ``steps`` steps (for the allocator peak)."""

    def run() -> None:
        step = build_training(cfg)
        for _ in range(steps):
            step()

    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss_peak_delta(cfg: Config, steps: int = 3) -> int:
    """Peak RSS of steps 2..``steps`` above the RSS after step 1, in this (fresh) process.

    Step 1 runs first so that lazy initialisations (oneDNN primitives, Adam's
    state) are in the baseline; then Linux's peak-RSS counter (VmHWM) is reset
    through ``/proc/self/clear_refs`` so that only the measured steps set it.
    What remains is what a step allocates: its activations (and gradients).
    """
    step = build_training(cfg)
    step()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    for _ in range(max(1, steps - 1)):
        step()
    return _status_kib("VmHWM") - before


def measure_in_subprocess(overrides: list[str], steps: int = 3, timeout_s: float = 600,
                          kinds: tuple[str, ...] = ("allocator", "rss")) -> MeasuredPeak:
    """The measurements of the tiny-preset loop with ``overrides``, each in a fresh interpreter."""
    results = {}
    for kind in kinds:
        command = [sys.executable, "-m", "avbert.planning.measure", kind, str(steps), *overrides]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if kind == "rss":
            env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory measurement failed:\n{done.stderr[-4000:]}")
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])["bytes"]
    return MeasuredPeak(results.get("allocator", 0), results.get("rss"))


def _main(argv: list[str]) -> None:
    from avbert.config import load_config

    kind, steps, overrides = argv[0], int(argv[1]), argv[2:]
    cfg = load_config(None, ["model.preset=tiny", "data.preset=tiny", *overrides])
    torch.set_num_threads(1)  # the count of bytes does not depend on it; contention does not slow it
    measured = allocator_peak(training_loop(cfg, steps)) if kind == "allocator" else rss_peak_delta(cfg, steps)
    print(json.dumps({"kind": kind, "bytes": int(measured)}))


if __name__ == "__main__":
    _main(sys.argv[1:])
