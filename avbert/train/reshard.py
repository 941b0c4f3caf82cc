"""Resuming a checkpoint at another world size (ZeRO stages 0, 1, 2).

``resume_mode`` says how a run loads a checkpoint: as written (``same``), directly
(``direct``: ZeRO 0, where every rank's optimizer state is whole), or through
DeepSpeed's universal checkpoint (``universal``: ZeRO 1/2, converted once by
``universal_checkpoint``, whose buffers ``load_buffers`` restores: DeepSpeed's
universal load restores parameters and optimizer state only). Another ZeRO stage,
or ZeRO 3 at another world size, is refused (``CheckpointMismatchError``) naming
what to relaunch with. ``regrid_loader_state`` continues the epoch's data order on
the new grid of ranks. docs/checkpoints.md has the details.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
from pathlib import Path

import torch

from avbert.rundir import read_yaml_mapping
from avbert.train.checkpoint import (
    DS_TAG,
    UNIVERSAL_TAG,
    CheckpointInfo,
    CheckpointMismatchError,
    read_marker,
)

def check_compatible(info: CheckpointInfo, world_size: int, zero_stage: int) -> None:
    """Refuse to resume a checkpoint written with another world size or ZeRO stage."""
    if (info.world_size, info.zero_stage) != (world_size, zero_stage):
        raise CheckpointMismatchError(
            f"cannot resume {info.path}: it was written with world size {info.world_size} and ZeRO stage "
            f"{info.zero_stage}, but this run has world size {world_size} and ZeRO stage {zero_stage}. "
            f"Relaunch with world size {info.world_size} and train.zero_stage={info.zero_stage}, "
            f"or start a fresh train.run_dir."
        )


SAME, DIRECT, UNIVERSAL = "same", "direct", "universal"
RESHARDABLE_STAGES = (0, 1, 2)


def resume_mode(info: CheckpointInfo, world_size: int, zero_stage: int) -> str:
    """How this run loads ``info``: ``same`` (its world size), ``direct`` (ZeRO stage 0 at another
    world size: every rank's optimizer state is whole), ``universal`` (ZeRO 1/2 at another world
    size, through DeepSpeed's universal checkpoint). Another ZeRO stage, or stage 3 at another world
    size, is refused with ``CheckpointMismatchError``."""
    if info.zero_stage != zero_stage:
        check_compatible(info, world_size, zero_stage)
    if info.world_size == world_size:
        return SAME
    if zero_stage not in RESHARDABLE_STAGES:
        raise CheckpointMismatchError(
            f"cannot resume {info.path} with world size {world_size}: it was written with world size "
            f"{info.world_size} at ZeRO stage {zero_stage}, and only ZeRO stages "
            f"{', '.join(map(str, RESHARDABLE_STAGES))} are resumed at another world size. Relaunch with "
            f"world size {info.world_size}, or start a fresh train.run_dir."
        )
    return DIRECT if zero_stage == 0 else UNIVERSAL


def universal_checkpoint(info: CheckpointInfo) -> Path:
    """``info``'s DeepSpeed files as a universal checkpoint, ``<checkpoint>/universal/`` (converted
    once, by one process; the folder appears by rename, so it is whole when it exists).

    DeepSpeed's converter writes each model-state tensor that has no optimizer state of its
    own (a second name of a shared parameter, a buffer) to a file of its own; the model-state
    tensors of a ZeRO checkpoint are views of one flat buffer, and saving a view saves the whole
    buffer. The converter is therefore given a copy of the model-state file whose tensors are
    independent, and the optimizer shards through symbolic links.
    """
    target = info.path / UNIVERSAL_TAG
    if (target / "zero").is_dir():
        return target
    work = info.path / f"{UNIVERSAL_TAG}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    source, output = work / "input", work / "output"
    try:
        source.mkdir(parents=True)
        for file in sorted((info.path / DS_TAG).iterdir()):
            if file.name.startswith("mp_rank_") and file.name.endswith("_model_states.pt"):
                state = torch.load(file, map_location="cpu", weights_only=False)
                state["module"] = {key: value.clone() for key, value in state["module"].items()}
                torch.save(state, source / file.name)
            else:
                (source / file.name).symlink_to(file.resolve())
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        args = argparse.Namespace(input_folder=str(source), output_folder=str(output), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds_to_universal(args)
        os.replace(output, target)
    except Exception as err:
        raise CheckpointMismatchError(
            f"cannot resume {info.path} (world size {info.world_size}) at another world size: converting "
            f"{info.path / DS_TAG} to a universal checkpoint failed with {type(err).__name__}: {err}. Relaunch "
            f"with world size {info.world_size}, or start a fresh train.run_dir."
        ) from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_buffers(module: torch.nn.Module, path: Path) -> None:
    """The module's buffers (norm statistics) from rank 0's model states of a universal
    checkpoint: DeepSpeed's universal loading restores parameters and optimizer state only."""
    files = sorted(path.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{path} has no mp_rank_*_model_states.pt to take the module's buffers from")
    saved = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    names = {name for name, _ in module.named_buffers(remove_duplicate=False)}
    missing = sorted(names - saved.keys())
    if missing:
        raise KeyError(f"{files[0]} lacks the buffers {', '.join(missing[:5])}")
    module.load_state_dict({name: saved[name] for name in names}, strict=False)


def regrid_loader_state(path: Path, rank: int, world_size: int, batch_size: int) -> tuple[dict, int]:
    """Loader state for ``rank`` of ``world_size`` continuing the epoch the checkpoint in ``path``
    stopped in, and how many samples of that epoch the new ranks see a second time.

    ``avbert.data.resumable`` deals an epoch's order round-robin, so after ``position`` batches
    of ``b`` on each of ``W`` ranks exactly the first ``W * b * position`` samples of the
    epoch's order have been consumed. The new ranks continue at the largest multiple of their
    own ``world_size * batch_size`` at or below that count: none of the epoch is skipped, and
    the last ``consumed mod (world_size * batch_size)`` consumed samples (fewer than one new
    global batch; 0 when it divides) are trained on again. Skip counts of the old ranks are
    summed onto new rank ``old_rank mod world_size``.
    """
    first = read_marker(path, 0)
    old_world = int(first["world_size"])
    markers = [first] + [read_marker(path, r) for r in range(1, old_world)]
    old_batch = first.get("batch_size") or ((read_yaml_mapping(path / "config.yaml") or {}).get("data") or {}).get(
        "batch_size")
    if not old_batch:
        raise CheckpointMismatchError(f"{path} records no data batch size; resume it with world size {old_world}")
    loader = first["loader"]
    consumed = old_world * int(old_batch) * int(loader["position"])
    position, repeated = divmod(consumed, world_size * batch_size)
    skipped: dict[str, int] = {}
    for old_rank, marker in enumerate(markers):
        if old_rank % world_size == rank:
            for key, value in marker["loader"].get("skipped", {}).items():
                skipped[key] = skipped.get(key, 0) + int(value)
    state = {**loader, "position": position, "world_size": world_size, "rank": rank, "skipped": skipped}
    return state, repeated


