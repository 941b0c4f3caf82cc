"""Checkpoints that are either complete or ignored, and the fp32 export.

Layout of one checkpoint, ``<run_dir>/checkpoints/step_<8-digit step>/`` (``step_00001600/``):

- ``ds/``: DeepSpeed's files (module, and the ZeRO partitions of the
  optimizer state of every rank);
- ``rank_R.pt``: rank R's random-number-generator states;
- ``rank_R.json``: rank R's completion marker, written last, after its
  DeepSpeed files and its ``.pt``. It records the step, world size, ZeRO
  stage and that rank's data-loader position.

A checkpoint is complete once the markers of all ``world_size`` ranks exist,
parse and agree; anything else (a rank killed mid-save, a truncated marker) is
ignored, and older complete checkpoints are deleted only after a newer one is
complete. Markers are written by rename so they are never half-written.

``AVBERT_FAULT=<point>@<step>[:<rank>]`` kills the named rank (default: all)
with SIGKILL at a point of the save (``before_marker``, ``after_checkpoint``);
the crash-consistency tests use it to interrupt a save at an exact place.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from avbert.rundir import read_json, replaced_on_success, write_json

DS_TAG = "ds"
FAULT_ENV = "AVBERT_FAULT"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written by a job of another shape than the current one."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    world_size: int
    zero_stage: int


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step_{step:08d}"


def read_complete(path: Path) -> Optional[CheckpointInfo]:
    """The checkpoint in ``path`` if every rank's marker is there and agrees, else None."""
    first = read_json(path / "rank_0.json")
    if not first or "world_size" not in first:
        return None
    keys = ("step", "world_size", "zero_stage")
    for rank in range(1, int(first["world_size"])):
        marker = read_json(path / f"rank_{rank}.json")
        if not marker or any(marker.get(k) != first[k] for k in keys):
            return None
    return CheckpointInfo(path, int(first["step"]), int(first["world_size"]), int(first["zero_stage"]))


def complete_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = (read_complete(path) for path in sorted(root.glob("step_*")) if path.is_dir())
    return sorted((info for info in found if info is not None), key=lambda info: info.step)


def latest_complete(run_dir: str | Path) -> Optional[CheckpointInfo]:
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def check_compatible(info: CheckpointInfo, world_size: int, zero_stage: int) -> None:
    """Refuse to resume a checkpoint written with another world size or ZeRO stage."""
    if (info.world_size, info.zero_stage) != (world_size, zero_stage):
        raise CheckpointMismatchError(
            f"cannot resume {info.path}: it was written with world size {info.world_size} and ZeRO stage "
            f"{info.zero_stage}, but this run has world size {world_size} and ZeRO stage {zero_stage}. "
            f"Relaunch with world size {info.world_size} and train.zero_stage={info.zero_stage}, "
            f"or start a fresh train.run_dir."
        )


def fault_point(name: str, step: int, rank: int) -> None:
    """Die here if ``AVBERT_FAULT`` names this point, step and rank."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    point, _, where = spec.partition("@")
    at_step, _, at_rank = where.partition(":")
    if point == name and int(at_step) == step and (not at_rank or int(at_rank) == rank):
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def clear_step_dir(path: Path) -> None:
    """Remove what an interrupted earlier save of the same step left behind (rank 0, before a barrier)."""
    if path.exists():
        shutil.rmtree(path)


def save_rank_files(path: Path, rank: int, marker: dict) -> None:
    """This rank's RNG states, then its marker: the marker is the last file it writes."""
    with replaced_on_success(path / f"rank_{rank}.pt") as tmp:
        torch.save(rng_state(), tmp)
    fault_point("before_marker", int(marker["step"]), rank)
    write_json(path / f"rank_{rank}.json", marker)


def read_marker(path: Path, rank: int) -> dict:
    marker = read_json(path / f"rank_{rank}.json")
    if marker is None:
        raise FileNotFoundError(f"{path} has no readable marker for rank {rank}")
    return marker


def load_rank_rng(path: Path, rank: int) -> None:
    set_rng_state(torch.load(path / f"rank_{rank}.pt", weights_only=False))


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Keep the ``keep`` newest complete checkpoints; drop older ones and stale partial saves."""
    complete = complete_checkpoints(run_dir)
    if not complete:
        return []
    kept = {info.path for info in complete[-keep:]}
    newest = complete[-1].step
    removed = []
    for path in sorted(checkpoint_root(run_dir).glob("step_*")):
        step = int(path.name.split("_")[1]) if path.name.split("_")[1].isdigit() else -1
        if path not in kept and step < newest:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Entries under ``prefix`` with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def stage0_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's weights in fp32 from a ZeRO stage-0 engine, whose module holds them whole."""
    return {key: value.detach().float().clone() if value.is_floating_point() else value.detach().clone()
            for key, value in engine.module.state_dict().items()}


def fp32_state_dict(engine, info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of a complete checkpoint, loadable without DeepSpeed."""
    if info.zero_stage == 0:
        return stage0_fp32_state_dict(engine)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(info.path), tag=DS_TAG)
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    return fill_shared_aliases(state, engine.module)


def fill_shared_aliases(state: dict, module: torch.nn.Module) -> dict:
    """Add the names under which shared tensors appear more than once.

    DeepSpeed's consolidation stores a tensor once per object; a module
    reused in several places (cross-layer sharing) is visited only once, so
    its other names are missing. They are restored from any present alias.
    """
    names_by_tensor: dict[int, list[str]] = {}
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        names_by_tensor.setdefault(id(tensor), []).append(name)
    for names in names_by_tensor.values():
        present = next((name for name in names if name in state), None)
        for name in names:
            if present is not None and name not in state:
                state[name] = state[present]
    return state
