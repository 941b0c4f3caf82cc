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
from torch import nn

from avbert.objectives.infonce import info_nce


def masked_embedding_prediction(outputs: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
                                valid: torch.Tensor, sampler: nn.Module, scorer: nn.Module,
                                num_negatives: int) -> dict[str, torch.Tensor]:
    """outputs o [B, T, D] (clip positions, BOS removed), targets x [B, T, D] -> {"loss", "acc"}.

    ``chosen`` [B, T] marks the masked positions that are scored; ``valid``
    [B, T] marks the positions negatives may come from. Positions chosen but
    not valid are ignored.
    """
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
    valid = valid.bool()
    queries = (chosen.bool() & valid).nonzero()  # [Q, 2] of (b, t)
    batch, clips, width = targets.shape
    if queries.shape[0]:
        negative_index = sampler(targets, valid, queries, num_negatives)  # [Q, K] into B*T
    else:
        negative_index = queries.new_zeros((0, num_negatives))
    negatives = targets.reshape(batch * clips, width)[negative_index]
    o = outputs[queries[:, 0], queries[:, 1]]
    x = targets[queries[:, 0], queries[:, 1]]
    return info_nce(scorer, o, x, negatives)
