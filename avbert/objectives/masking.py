"""BERT-style masking of CNN tokens for masked embedding prediction.

About ``mask_prob`` of the valid positions are chosen (each independently,
and at least one per sequence that has a valid position). Of the chosen ones,
``replace`` are set to a learned mask embedding, ``random`` to another valid
token drawn uniformly from the minibatch, and the rest are left unchanged.
All randomness comes from the generator passed in.
"""

from __future__ import annotations

import torch


def choose_positions(valid: torch.Tensor, mask_prob: float, generator: torch.Generator) -> torch.Tensor:
    """bool [B, T]: each valid position with probability ``mask_prob``, >= 1 per sequence."""
    valid = valid.bool()
    chosen = valid & (torch.rand(valid.shape, generator=generator, device=valid.device) < mask_prob)
    # Sequences left without a chosen position get one valid position, uniformly.
    empty = valid.any(dim=1) & ~chosen.any(dim=1)
    if bool(empty.any()):
        keys = torch.rand(valid.shape, generator=generator, device=valid.device).masked_fill(~valid, -1.0)
        pick = keys.argmax(dim=1)
        rows = empty.nonzero().squeeze(1)
        chosen[rows, pick[rows]] = True
    return chosen


def random_other_positions(valid: torch.Tensor, positions: torch.Tensor,
                           generator: torch.Generator) -> torch.Tensor:
    """For flat ``positions`` [M], a uniformly drawn other valid flat position each."""
    valid_flat = valid.reshape(-1).nonzero().squeeze(1)
    rank_of = torch.cumsum(valid.reshape(-1).long(), 0) - 1  # position's index among valid ones
    draw = torch.randint(0, valid_flat.numel() - 1, positions.shape, generator=generator, device=valid.device)
    draw = draw + (draw >= rank_of[positions]).long()  # skip the position itself
    return valid_flat[draw]


def mask_tokens(tokens: torch.Tensor, valid: torch.Tensor, mask_embedding: torch.Tensor,
                generator: torch.Generator, mask_prob: float = 0.15, replace: float = 0.8,
                random: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, T, D] -> (masked tokens [B, T, D], chosen bool [B, T]).

    Gradients reach ``tokens`` through the unchanged and randomly replaced
    positions and ``mask_embedding`` [D] through the replaced ones.
    """
    if not (0.0 <= replace and 0.0 <= random and replace + random <= 1.0):
        raise ValueError(f"need replace, random >= 0 and replace + random <= 1, got {replace}, {random}")
    batch, clips, width = tokens.shape
    chosen = choose_positions(valid, mask_prob, generator)
    action = torch.rand((batch, clips), generator=generator, device=tokens.device)
    to_mask = chosen & (action < replace)
    to_random = chosen & (action >= replace) & (action < replace + random)
    if int(valid.sum()) < 2:  # no other token to swap in
        to_random = torch.zeros_like(to_random)

    flat = tokens.reshape(batch * clips, width)
    source = torch.arange(batch * clips, device=tokens.device)
    random_rows = to_random.reshape(-1).nonzero().squeeze(1)
    if random_rows.numel():
        source = source.index_put((random_rows,), random_other_positions(valid.bool(), random_rows, generator))
    masked = flat[source].reshape(batch, clips, width)
    masked = torch.where(to_mask.unsqueeze(-1), mask_embedding.to(tokens.dtype).expand_as(masked), masked)
    return masked, chosen
