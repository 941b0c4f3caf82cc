"""Learning-rate schedule: linear warm-up, then cosine (or linear, ``optim.schedule``) decay to ``min_lr``.

The training loop calls ``lr_at`` for every optimizer step and writes the
value into each parameter group, so the schedule is a pure function of the
step and survives resumption without any scheduler state.
"""

from __future__ import annotations

import math

import torch

from avbert.config import OptimConfig


def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup = optim.warmup_steps
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    remaining = 1.0 - progress if optim.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr + (optim.lr - optim.min_lr) * remaining


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every parameter group, times the group's ``lr_scale`` (the
    downstream head's own rate, ``avbert.train.ds_config.parameter_groups``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
