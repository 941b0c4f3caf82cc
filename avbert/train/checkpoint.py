"""Checkpoints that are either complete or ignored, and the fp32 export.

Layout of one checkpoint, ``<run_dir>/checkpoints/step_<8-digit step>/`` (``step_00001600/``):

- ``ds/``: DeepSpeed's files (module, and the ZeRO partitions of the
  optimizer state of every rank);
- ``config.yaml``: the run's resolved config;
- ``rank_R.pt``: rank R's random-number-generator states;
- ``rank_R.json``: rank R's marker. It records the step, world size, ZeRO
  stage and that rank's data-loader position. Ranks other than 0 write theirs
  after their DeepSpeed files and their ``.pt``; rank 0 writes ``rank_0.json``
  last of all, once every rank reported its files written, and lists in it
  (``files``) every other file of the checkpoint with its size in bytes and
  its SHA-256. ``rank_0.json`` is the completion marker;
- ``universal/``: the ZeRO 1/2 files as DeepSpeed's universal checkpoint, made
  when a run of another world size resumes from this one (``universal_checkpoint``).

A checkpoint is complete when the markers of all ``world_size`` ranks exist,
parse and agree, and every file ``rank_0.json`` lists exists with the recorded
size; resuming also compares every file's SHA-256. Anything else (a rank killed
mid-save, a disk that filled up, a shard truncated or deleted afterwards) is
not complete: resumption takes the newest checkpoint that passes and logs each
newer one it passed over with the reason. A run directory whose checkpoints
all fail although one of them was once complete (its ``rank_0.json`` lists its
files) is refused with ``CheckpointDamagedError`` rather than restarted from
step 0. There is no "latest" pointer: the newest complete checkpoint is the
latest, so a save that fails part-way never replaces it. Older complete
checkpoints are deleted only after a newer one is complete. Markers are written
by rename so they are never half-written.

A ``rank_0.json`` without ``files`` is judged on the markers alone.

A checkpoint resumes at another world size at ZeRO stages 0, 1 and 2
(``avbert.train.reshard``). docs/checkpoints.md has the whole protocol.

``AVBERT_FAULT=<point>@<step>[:<rank>]`` kills the named rank (default: all)
with SIGKILL at a point of the save (``before_marker``, ``after_checkpoint``);
the crash-consistency tests use it to interrupt a save at an exact place.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from avbert.rundir import file_sha256, read_json, replaced_on_success, write_json

DS_TAG = "ds"
UNIVERSAL_TAG = "universal"
FAULT_ENV = "AVBERT_FAULT"
COMPLETION_MARKER = "rank_0.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed or written; the message names it and what to do."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint written by a job of another shape than the current one."""


class CheckpointDamagedError(CheckpointError):
    """Every checkpoint of the run directory fails verification, and one of them was complete once."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed on at least one rank (a full disk, an I/O error)."""


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


def marker_name(rank: int) -> str:
    return f"rank_{rank}.json"


def file_inventory(path: Path) -> dict[str, dict]:
    """Every file under ``path`` but the completion marker: relative name -> bytes and SHA-256."""
    inventory = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        if name != COMPLETION_MARKER:
            inventory[name] = {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
    return inventory


def checkpoint_problem(path: Path, checksums: bool = False) -> Optional[str]:
    """Why the checkpoint in ``path`` is not complete, or None when it is.

    Checks the markers and the size of every file ``rank_0.json`` lists; with
    ``checksums`` also every file's SHA-256 (reads the whole checkpoint).
    """
    first = read_json(path / COMPLETION_MARKER)
    if not first or "world_size" not in first:
        return f"no readable completion marker {path / COMPLETION_MARKER} (the save did not finish)"
    keys = ("step", "world_size", "zero_stage")
    for rank in range(1, int(first["world_size"])):
        marker = read_json(path / marker_name(rank))
        if not marker:
            return f"the marker of rank {rank}, {path / marker_name(rank)}, is missing or unreadable"
        if any(marker.get(k) != first[k] for k in keys):
            return f"the marker of rank {rank}, {path / marker_name(rank)}, disagrees with {COMPLETION_MARKER}"
    for name, recorded in sorted((first.get("files") or {}).items()):
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            return f"{file} is missing"
        if size != recorded["bytes"]:
            return f"{file} is {size} bytes, {COMPLETION_MARKER} recorded {recorded['bytes']} (truncated or rewritten)"
        if checksums and file_sha256(file) != recorded["sha256"]:
            return f"{file} does not have the SHA-256 {COMPLETION_MARKER} recorded (its content changed)"
    return None


def _info(path: Path) -> CheckpointInfo:
    first = read_json(path / COMPLETION_MARKER)
    return CheckpointInfo(path, int(first["step"]), int(first["world_size"]), int(first["zero_stage"]))


def read_complete(path: Path, checksums: bool = False) -> Optional[CheckpointInfo]:
    """The checkpoint in ``path`` if it is complete (``checkpoint_problem``), else None."""
    return None if checkpoint_problem(path, checksums) else _info(path)


def step_dirs(run_dir: str | Path) -> list[Path]:
    """The ``step_*`` folders of a run, newest step first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [path for path in root.glob("step_*") if path.is_dir() and path.name[5:].isdigit()]
    return sorted(found, key=lambda path: int(path.name[5:]), reverse=True)


def complete_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints of a run (markers and file sizes checked), oldest first."""
    found = (read_complete(path) for path in step_dirs(run_dir))
    return sorted((info for info in found if info is not None), key=lambda info: info.step)


def latest_complete(run_dir: str | Path) -> Optional[CheckpointInfo]:
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint to resume (None: start at step 0) and the newer ones passed over, with the reason."""

    info: Optional[CheckpointInfo]
    rejected: tuple[tuple[str, str], ...] = ()

    def report(self) -> list[str]:
        """One line per checkpoint passed over, naming it, why, and where the run resumes instead."""
        target = f"resuming from {self.info.path}" if self.info else "no complete checkpoint is left"
        return [f"checkpoint {path} is not complete: {reason}; {target}" for path, reason in self.rejected]


def resume_point(run_dir: str | Path) -> ResumePoint:
    """The newest checkpoint that passes full verification (sizes and SHA-256).

    Raises ``CheckpointDamagedError`` when none passes but one of them had been
    completed (its ``rank_0.json`` lists its files): its files were damaged
    afterwards, and starting again at step 0 would throw the run away.
    """
    rejected = []
    for path in step_dirs(run_dir):
        problem = checkpoint_problem(path, checksums=True)
        if problem is None:
            return ResumePoint(_info(path), tuple(rejected))
        rejected.append((str(path), problem))
    damaged = [(path, reason) for path, reason in rejected
               if (read_json(Path(path) / COMPLETION_MARKER) or {}).get("files")]
    if damaged:
        listing = "; ".join(f"{path}: {reason}" for path, reason in rejected)
        raise CheckpointDamagedError(
            f"no checkpoint of {run_dir} can be resumed: {listing}. Restore the damaged files, or move "
            f"{checkpoint_root(run_dir)} aside (or choose a fresh train.run_dir) to start again at step 0."
        )
    return ResumePoint(None, tuple(rejected))


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


def remove_partial(path: Path) -> None:
    """Remove a checkpoint folder whose save failed (never raises: the save's error is the one to report)."""
    shutil.rmtree(path, ignore_errors=True)


def save_rank_files(path: Path, rank: int, marker: dict) -> None:
    """This rank's RNG states, then (ranks other than 0) its marker, the last file the rank writes."""
    with replaced_on_success(path / f"rank_{rank}.pt") as tmp:
        torch.save(rng_state(), tmp)
    if rank != 0:
        fault_point("before_marker", int(marker["step"]), rank)
        write_json(path / marker_name(rank), marker)


def write_completion_marker(path: Path, marker: dict) -> None:
    """Rank 0's marker with the inventory of every other file: written once all ranks' files are."""
    fault_point("before_marker", int(marker["step"]), 0)
    write_json(path / COMPLETION_MARKER, {**marker, "files": file_inventory(path)})


FULL_BELOW_BYTES = 1 << 20
"""A filesystem with less free space than this after a failed write counts as full."""


def free_bytes(path: Path) -> Optional[int]:
    """Free space on the filesystem of ``path`` (or of its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_no_space(error: Optional[BaseException], path: Path) -> bool:
    """Whether ``error``, raised writing under ``path``, comes from a full disk or quota.

    An ``OSError`` says so by its errno; torch's zip writer reports a failed write
    without one ("unexpected pos ...", "file write failed"), so a write error on a
    filesystem left with less than ``FULL_BELOW_BYTES`` free counts as well.
    """
    if error is None:
        return False
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cause) or "Disk quota exceeded" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    free = free_bytes(path)
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < FULL_BELOW_BYTES


def save_failure_message(path: Path, error: Optional[BaseException], no_space: bool,
                         latest: Optional[CheckpointInfo], free: Optional[int] = None) -> str:
    """What ``CheckpointSaveError`` says: which checkpoint, why (``free``: bytes left when it
    failed), what is kept, what to do."""
    here = f"{type(error).__name__}: {error}" if error is not None else None
    if no_space:
        cause = "no space left on device (ENOSPC)" + (f", {free} bytes were free" if free is not None else "")
        cause += f"; on this rank: {here}" if here else " (on another rank)"
        advice = "free space or move the run directory to a larger disk, then rerun the same command to resume"
    else:
        cause = here or "it failed on another rank (that rank's error names the cause)"
        advice = "fix the cause, then rerun the same command to resume"
    kept = (f"the latest complete checkpoint is still {latest.path} (step {latest.step})" if latest
            else "no complete checkpoint exists yet")
    return f"saving checkpoint {path} failed: {cause}. The partial checkpoint was removed and {kept}; {advice}."


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
    for path in step_dirs(run_dir):
        if path not in kept and int(path.name[5:]) < newest:
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
