"""The memory planner against measured peaks.

CPU, tiny scale: ``avbert.planning.plan`` at ZeRO stage 0, fp32, one rank
(what a plain torch AdamW loop allocates) against the allocator peak of real
training steps measured in a fresh subprocess
(``avbert.planning.measure``), with activation checkpointing off and on.
As a cross-check that does not rely on the profiler, the peak RSS that a
step adds above the RSS before it (after a warm-up step) is compared with
what the planner says a step allocates on top of the model states and the
batch: the activations, plus the gradients under checkpointing.

Paper scale without a GPU: the planner's prediction for an 80 GB card, and
the FLOPs of one step, both computed on meta/fake tensors; measured against
a real GPU by ``avbert.bench.gpu`` when one is present.
"""

from __future__ import annotations

from avbert.config import Config, load_config
from avbert.planning.measure import measure_in_subprocess
from avbert.planning.memory import GiB, plan

PLANNER_TOLERANCE = 0.15  # within 15% of the measured peak
CPU_OVERRIDES = ["model.preset=tiny", "data.preset=tiny", "train.precision=fp32", "train.zero_stage=0"]


def tiny_config(batch: int, checkpointing: bool) -> Config:
    return load_config(None, [*CPU_OVERRIDES, f"data.batch_size={batch}",
                              f"train.activation_checkpointing={str(checkpointing).lower()}"])


def _overrides(cfg: Config) -> list[str]:
    return [*CPU_OVERRIDES, f"data.batch_size={cfg.data.batch_size}",
            f"train.activation_checkpointing={str(cfg.train.activation_checkpointing).lower()}"]


def allocator_rows(batch: int) -> dict:
    """Planner against the measured allocator peak, checkpointing off and on."""
    rows = {}
    for checkpointing in (False, True):
        cfg = tiny_config(batch, checkpointing)
        predicted = plan(cfg, 80 * GiB, world_size=1).peak
        measured = measure_in_subprocess(_overrides(cfg), kinds=("allocator",)).allocator_peak
        error = predicted / measured - 1.0
        rows["checkpointing" if checkpointing else "plain"] = {
            "batch": batch, "predicted_bytes": predicted, "measured_bytes": measured,
            "relative_error": error, "within_tolerance": abs(error) <= PLANNER_TOLERANCE,
        }
    return rows


def rss_rows(batch: int) -> dict:
    """Peak RSS a step adds, against the planner's per-step bytes, checkpointing off and on."""
    rows = {}
    for checkpointing in (False, True):
        cfg = tiny_config(batch, checkpointing)
        result = plan(cfg, 80 * GiB, world_size=1)
        predicted = result.activations + (result.gradients if checkpointing else 0)
        measured = measure_in_subprocess(_overrides(cfg), kinds=("rss",)).rss_peak_delta
        rows["checkpointing" if checkpointing else "plain"] = {
            "batch": batch, "predicted_bytes": predicted, "measured_bytes": measured,
            "relative_error": predicted / measured - 1.0,
        }
    return rows


def paper_prediction(gpu_memory: int = 80 * GiB) -> dict:
    """Planner output at paper scale (bf16, ZeRO-2 and stage 0, checkpointing off and on)."""
    rows = {}
    for stage in (0, 2):
        for checkpointing in (False, True):
            cfg = load_config(None, ["model.preset=paper", "data.preset=paper", "train.precision=bf16",
                                     f"train.zero_stage={stage}",
                                     f"train.activation_checkpointing={str(checkpointing).lower()}"])
            result = plan(cfg, gpu_memory, world_size=1)
            rows[f"stage{stage}/{'checkpointing' if checkpointing else 'plain'}"] = result.to_dict()
    return rows


def run(batch: int = 16, rss_check: bool = True) -> dict:
    """Planner validation, as one JSON-ready record."""
    out = {"tolerance": PLANNER_TOLERANCE, "cpu_tiny": allocator_rows(batch), "paper_80GB": paper_prediction()}
    if rss_check:
        out["cpu_rss"] = rss_rows(batch)
    return out
