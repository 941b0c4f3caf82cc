"""Training metrics: per-interval means, ``metrics.jsonl`` and ``status.json``.

Every log step appends one flat JSON object to ``<run_dir>/metrics.jsonl``:
``step``, every loss and accuracy the objective returned under its own name
(``loss``, ``mep_visual/loss``, ``cpp/acc``, ...), averaged over the
micro-batches since the previous log line and over ranks, plus ``lr``,
``grad_norm``, ``perf/clips_per_s``, ``perf/peak_mem_mb``,
``data/skipped...`` (videos a loader left out, by reason), ``data/padded`` and
``data/padded_clips`` (short videos kept with masked clips, and those clips; both
running totals since the run began) and ``time/elapsed_s``. ``status.json`` holds the run's
state (running, completed, preempted, failed) for status tools.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Optional

import torch

from avbert.rundir import METRICS, STATUS, RunState, RunStatus, read_json, read_jsonl, write_json
from avbert.train.distributed import all_reduce_mean


class IntervalMeans:
    """Sums of scalar tensors since the last log step, kept on device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def reduce(self) -> dict[str, float]:
        """Means over this interval and over ranks (every rank must call it)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[key] for key in keys]) / max(self.count, 1)
        means = all_reduce_mean(local).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, means))


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocated memory, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def gather_counts(local: dict) -> list[dict]:
    """Every rank's small dict (clip counts, skip counts, memory), on every rank."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return [local]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, local)
    return out


def combine_counts(per_rank: list[dict], seconds: float) -> dict[str, float]:
    """Throughput, summed skip counts and the largest peak memory over ranks."""
    clips = sum(entry["clips"] for entry in per_rank)
    skipped: dict[str, int] = {}
    for entry in per_rank:
        for key, value in entry["skipped"].items():
            skipped[f"data/{key}"] = skipped.get(f"data/{key}", 0) + value
    out = {"perf/clips_per_s": clips / max(seconds, 1e-9), "perf/peak_mem_mb": max(e["peak_mem_mb"] for e in per_rank)}
    out["data/skipped"] = skipped.pop("data/skipped", 0)
    out.update(skipped)
    return out


class MetricsFile:
    """Appends log lines to ``metrics.jsonl`` (main rank only), and to the sinks of
    ``train.loggers`` once ``open_sinks`` has opened them (``avbert.train.loggers``)."""

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.sinks: list = []

    def open_sinks(self, loggers, config: dict, resume_step: Optional[int] = None) -> None:
        """TensorBoard and W&B as ``loggers`` asks; ``resume_step``: the checkpoint a resumed
        run continues from (its later steps are logged again)."""
        if self.enabled:
            from avbert.train.loggers import build_sinks

            self.sinks = build_sinks(loggers, self.path.parent, config, resume_step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step``: a resumed run re-logs the steps after its checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _line_step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            for sink in self.sinks:
                sink.write(record)


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # unreadable tail of a killed writer


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All readable log lines of a run (a half-written last line is left out)."""
    return read_jsonl(Path(run_dir) / METRICS)[0]


def write_status(run_dir: str | Path, state: str, step: int, total_steps: int,
                 loss: Optional[float] = None, **extra) -> None:
    """``status.json``: state, step, total steps, last loss, update time, and what ``extra``
    adds (the engine: the device type, the world size and each rank's host name, in rank
    order; a failure: the error)."""
    hosts = extra.pop("hosts", None)
    record = RunStatus(state=RunState(state), step=step, total_steps=total_steps, loss=loss,
                       updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), updated_unix=time.time(),
                       hosts=tuple(hosts) if hosts is not None else None, **extra)
    write_json(Path(run_dir) / STATUS, record.to_json())


def read_status(run_dir: str | Path) -> Optional[dict]:
    return read_json(Path(run_dir) / STATUS)
