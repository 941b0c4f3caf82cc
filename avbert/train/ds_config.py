"""The DeepSpeed configuration dict for a run, built from the suite's Config.

DeepSpeed is given the batch geometry, ZeRO stage, precision and gradient
clipping. The optimizer is a torch AdamW built here and handed to
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


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, undecayed vectors."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(module: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """torch AdamW over ``module``; its lr is overwritten every iteration."""
    return torch.optim.AdamW(
        parameter_groups(module, optim.weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
    )
