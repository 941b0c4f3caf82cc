"""Process-group setup and the few collectives the training loop needs.

Rank and world size come from the environment: ``torchrun`` sets them
locally, and on Slurm the launcher exports them with submitit's
``TorchDistributedEnvironment().export()`` before training starts. A plain
``python -m avbert.train`` with none of them set runs as a single process.
The backend is gloo on CPU and NCCL on GPU.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str) -> str:
    """``auto`` means CUDA when a GPU is visible, else CPU."""
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return preference


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launched() -> bool:
    """True when a launcher described the job in the environment."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return False
    missing = [key for key in _ENV_KEYS if key not in os.environ]
    if missing:
        raise RuntimeError(f"distributed environment is incomplete, missing: {', '.join(missing)}")
    return True


def _prepare_deepspeed(device: str) -> None:
    """Pin DeepSpeed's accelerator and skip its JIT-built shared-memory op.

    The shm op only serves inference and costs a ~50 s compile on CPU. The
    patch must go on the module object from ``importlib``: ``import
    deepspeed.comm.torch as m`` binds ``deepspeed.comm``'s ``torch`` name instead.
    """
    os.environ.setdefault("DS_ACCELERATOR", device)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def setup_distributed(device_preference: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Initialise the process group (once) and return this process's place in it."""
    device = resolve_device(device_preference)
    _prepare_deepspeed(device)
    import deepspeed

    launched = _launched()
    # DeepSpeed reads LOCAL_RANK; a lone process gets a private rendezvous and
    # leaves RANK/WORLD_SIZE/MASTER_* unset for the processes it may start.
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if device == "cuda" else "gloo",
            auto_mpi_discovery=False,
            verbose=False,
            timeout=timedelta(seconds=timeout_s),
            **({} if launched else {"init_method": f"tcp://127.0.0.1:{_free_port()}", "rank": 0, "world_size": 1}),
        )
    torch_device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return DistEnv(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, torch_device)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (flags that any rank may raise)."""
    out = values.clone()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (metrics)."""
    out = values.clone()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        out /= torch.distributed.get_world_size()
    return out


def broadcast_from_main(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_from_all(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def rank_hosts() -> list[str]:
    """The host name each rank runs on, in rank order (every rank must call it)."""
    return gather_from_all(socket.gethostname())


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
