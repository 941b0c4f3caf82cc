"""Masked embedding prediction (MEP) at one Transformer.

From the output o_t at each masked position, pick out the position's true CNN
token x_t among K negatives drawn by a sampler, with InfoNCE.

Gradients: the CNN tokens are both the Transformer's input and the target,
so the positives and the negatives keep their gradient and the CNNs learn
end to end from MEP (the paper trains everything from scratch this way).
Only the sampler works on detached tokens: which negatives are drawn is not
differentiable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from avbert.objectives.infonce import info_nce


def gather_candidates(targets: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every rank's tokens ``[W*B, T, D]`` and validity ``[W*B, T]``, and where this rank's
    videos start: this rank's tokens keep their gradient, the others' come without (each
    rank back-propagates into its own CNNs; DeepSpeed averages the gradients). On one
    process, the inputs themselves. Every rank must call it, with the same ``[B, T, D]``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return targets, valid, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    shape = torch.tensor(targets.shape, device=targets.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(other, shape) for other in shapes):
        raise ValueError(f"objective.negatives_scope 'global' needs the same minibatch shape on every rank; "
                         f"got {[tuple(s.tolist()) for s in shapes]}")
    tokens = [torch.empty_like(targets) for _ in range(world)]
    dist.all_gather(tokens, targets.detach().contiguous())
    tokens[rank] = targets
    flags = [torch.empty(valid.shape, dtype=torch.uint8, device=valid.device) for _ in range(world)]
    dist.all_gather(flags, valid.to(torch.uint8).contiguous())
    return torch.cat(tokens), torch.cat(flags).bool(), rank * targets.shape[0]


def masked_embedding_prediction(outputs: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
                                valid: torch.Tensor, sampler: nn.Module, scorer: nn.Module,
                                num_negatives: int, scope: str = "rank") -> dict[str, torch.Tensor]:
    """outputs o [B, T, D] (clip positions, BOS removed), targets x [B, T, D] -> {"loss", "acc"}.

    ``chosen`` [B, T] marks the masked positions that are scored; ``valid``
    [B, T] marks the positions negatives may come from. Positions chosen but
    not valid are ignored. ``scope``: negatives from this rank's minibatch
    (``rank``) or from every rank's (``global``, ``gather_candidates``).
    """
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
    valid = valid.bool()
    queries = (chosen.bool() & valid).nonzero()  # [Q, 2] of (b, t)
    pool, pool_valid, offset = gather_candidates(targets, valid) if scope == "global" else (targets, valid, 0)
    width = targets.shape[-1]
    if queries.shape[0]:
        shifted = queries + queries.new_tensor([offset, 0])
        negative_index = sampler(pool, pool_valid, shifted, num_negatives)  # [Q, K] into the pool, -1: none
    else:
        negative_index = queries.new_zeros((0, num_negatives))
    negatives = pool.reshape(-1, width)[negative_index.clamp_min(0)]
    o = outputs[queries[:, 0], queries[:, 1]]
    x = targets[queries[:, 0], queries[:, 1]]
    return info_nce(scorer, o, x, negatives, negative_index >= 0)
