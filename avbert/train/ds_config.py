"""The DeepSpeed configuration dict for a run, built from the suite's Config.

DeepSpeed is given the batch geometry, ZeRO stage, precision and gradient
clipping. The optimizer is a torch AdamW (or Adam) built here and handed to
``deepspeed.initialize`` (no JIT-compiled fused Adam), and the learning rate
is set by the training loop each iteration, so no DeepSpeed scheduler is
configured.

``precision: bf16`` is DeepSpeed's ``torch_autocast`` mode: weights,
gradients' master copies and optimizer state stay fp32, Linear and Conv
layers compute (and reduce their gradients) in bf16, and BatchNorm keeps
its fp32 statistics. DeepSpeed's ``bf16`` mode would cast the weights to
bf16, which the CNNs' BatchNorm layers (fp32 running statistics) refuse.
"""

from __future__ import annotations

import torch
from torch import nn

from avbert.config import Config, OptimConfig

REDUCE_BUCKET_ELEMENTS = int(5e7)
"""``zero_optimization.reduce_bucket_size``. ZeRO-1/2 allocate one gradient-reduction
bucket of this many elements per communication dtype during the backward pass, whatever
the model size: at DeepSpeed's default 5e8 that is 2 GB a rank in fp32 and 4 GB under
bf16 autocast (two dtypes). The paper model (4M Transformer + 40M CNN parameters) fits
in one 5e7 bucket per dtype, so gradients still travel in one reduction per dtype, for
a tenth of the memory; the 128M unshared variant takes four."""


def build_ds_config(cfg: Config, world_size: int) -> dict:
    """DeepSpeed's JSON config for ``cfg`` on ``world_size`` ranks."""
    micro = cfg.data.batch_size
    accum = cfg.train.grad_accum
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage, "reduce_bucket_size": REDUCE_BUCKET_ELEMENTS},
        "torch_autocast": {"enabled": cfg.train.precision == "bf16", "dtype": "bfloat16"},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,  # the loop does its own logging
        "wall_clock_breakdown": False,
        "dump_state": False,
    }


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm scales and embeddings-like vectors are not decayed."""
    return param.ndim <= 1 or name.endswith(".bias")


def parameter_groups(module: nn.Module, weight_decay: float, head_lr_scale: float = 1.0,
                     head_weight_decay: float | None = None) -> list[dict]:
    """Decayed matrices and undecayed vectors, the downstream head's (parameters under
    ``head.``) in groups of their own. Each group's ``lr_scale`` multiplies the scheduled
    learning rate (``avbert.train.schedule.set_lr``): ``head_lr / lr`` for the head, 1 else."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("head."), _no_decay(name, param)), []).append(param)
    head_decay = weight_decay if head_weight_decay is None else head_weight_decay
    out = []
    for (head, no_decay), params in sorted(groups.items()):
        decay = 0.0 if no_decay else (head_decay if head else weight_decay)
        out.append({"params": params, "weight_decay": decay, "lr_scale": head_lr_scale if head else 1.0})
    return out


def build_optimizer(module: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """torch AdamW (or Adam, ``optim.optimizer``) over ``module``; the training loop writes
    each group's learning rate every iteration."""
    head_scale = optim.head_lr / optim.lr if optim.head_lr is not None else 1.0
    cls = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return cls(
        parameter_groups(module, optim.weight_decay, head_scale, optim.head_weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
    )
