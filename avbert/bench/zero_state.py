"""Optimizer state held per rank under ZeRO-2 against stage 0, with 2 ranks on CPU.

Two processes (gloo) each build the tiny pretrainer, wrap it with the
training engine's own ``initialize_engine`` (the suite's DeepSpeed config and
torch AdamW) once per ZeRO stage and precision, train one step so that Adam
allocates its state, and count, on their rank:

* ``moments``: the bytes of the tensors in the torch optimizer's state
  (Adam's ``exp_avg`` and ``exp_avg_sq``, and its step counters);
* ``master``: the bytes of the tensors the torch optimizer steps that are
  not the module's own parameters (ZeRO's flat fp32 partition of the
  weights; at stage 0 the optimizer steps the module's parameters directly);
* ``step_peak``: the allocator's peak of tensor bytes above the start of a
  second training step (``avbert.planning.measure.allocator_peak``), which
  includes what the step allocates besides the state: activations, gradients
  and DeepSpeed's gradient-reduction buckets (ZeRO-1/2 allocate
  ``reduce_bucket_size`` elements per communication dtype during the
  backward pass, whatever the model size, and free them after the step).

These are counts of tensor bytes, not RSS: on CPU, DeepSpeed's flat buffers
dominate a rank's resident memory whatever the stage, which hides the
partitioning. They do not vary between runs, so they are measured once.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import torch
from torch import nn

ZERO_TARGET_RATIO = 0.5  # ZeRO-2 per-rank optimizer state = 1/2 of stage 0 with 2 ranks
TOLERANCE = 0.01  # flat-buffer padding to the partition alignment


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def optimizer_state_bytes(engine) -> dict[str, int]:
    """moments and master bytes held by this rank's engine."""
    inner = engine.basic_optimizer
    own = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
    moments = sum(tensor_bytes(t) for state in inner.state.values() for t in state.values() if torch.is_tensor(t))
    stepped = [p for group in inner.param_groups for p in group["params"]]
    master = sum(tensor_bytes(p) for p in stepped if p.untyped_storage().data_ptr() not in own)
    return {"moments": moments, "master": master, "optimizer_state": moments + master}


def tiny_config(stage: int, precision: str, batch: int):
    from avbert.config import load_config

    return load_config(None, [
        "model.preset=tiny", "data.preset=tiny", f"data.batch_size={batch}",
        f"train.zero_stage={stage}", f"train.precision={precision}",
    ])


def one_step(engine, cfg, seed: int) -> None:
    from avbert.planning.activations import synthetic_inputs

    torch.manual_seed(seed)
    video, audio = synthetic_inputs(cfg.data, cfg.data.batch_size, "cpu", fill=True)
    out = engine({"video": video, "audio": audio})
    engine.backward(out["loss"])
    engine.step()


def measure_rank(stage: int, precision: str, env, batch: int) -> dict:
    """Build an engine at ``stage``/``precision``, train one step, count its state."""
    from avbert.models import AVBert
    from avbert.objectives.pretraining import AVBertPretrainer
    from avbert.planning.measure import allocator_peak
    from avbert.train.engine import initialize_engine

    cfg = tiny_config(stage, precision, batch)
    torch.manual_seed(0)
    module: nn.Module = AVBertPretrainer(AVBert(cfg.model), cfg.objective)
    engine = initialize_engine(cfg, module, env)
    one_step(engine, cfg, seed=env.rank)
    counts = optimizer_state_bytes(engine)
    counts["step_peak"] = allocator_peak(lambda: one_step(engine, cfg, seed=env.rank + 100))
    counts["parameters"] = sum(p.numel() for p in module.parameters())
    return counts


def _worker(rank: int, world_size: int, port: int, out_dir: str, cells: list, batch: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from avbert.train.distributed import setup_distributed

    env = setup_distributed("cpu")
    results = {f"{precision}/stage{stage}": measure_rank(stage, precision, env, batch) for precision, stage in cells}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(world_size: int = 2, precisions: tuple[str, ...] = ("bf16", "fp32"), stages: tuple[int, ...] = (0, 2),
            batch: int = 2) -> dict[int, dict]:
    """Per-rank counts for every (precision, stage), from ``world_size`` spawned ranks."""
    import torch.multiprocessing as mp

    cells = [(precision, stage) for precision in precisions for stage in stages]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), out_dir, cells, batch), nprocs=world_size, join=True)
        return {rank: json.loads(Path(out_dir, f"rank{rank}.json").read_text()) for rank in range(world_size)}


def summarize(per_rank: dict[int, dict], world_size: int) -> dict:
    """Every rank's bytes per cell, and ZeRO-2 against stage 0 for each precision on rank 0.

    The target is met on Adam's state proper (the moments); ``met_with_master``
    says whether it also holds counting ZeRO's fp32 master partition."""
    cells = per_rank[0]
    out = {"world_size": world_size, "per_rank": {str(r): v for r, v in per_rank.items()}, "ratios": {}}
    for precision in sorted({key.split("/")[0] for key in cells}):
        base, zero = cells.get(f"{precision}/stage0"), cells.get(f"{precision}/stage2")
        if base and zero:
            moments = zero["moments"] / base["moments"]
            with_master = zero["optimizer_state"] / base["optimizer_state"]
            out["ratios"][precision] = {
                "moments": moments, "optimizer_state": with_master, "target_ratio": ZERO_TARGET_RATIO,
                "met": abs(moments - ZERO_TARGET_RATIO) <= TOLERANCE,
                "met_with_master": abs(with_master - ZERO_TARGET_RATIO) <= TOLERANCE,
            }
    return out


def run(world_size: int = 2, batch: int = 2) -> dict:
    """ZeRO-2 against stage 0, as one JSON-ready record."""
    return summarize(measure(world_size, batch=batch), world_size)
