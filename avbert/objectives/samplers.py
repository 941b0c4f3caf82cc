"""Negative samplers for masked embedding prediction.

Every sampler has one interface::

    sampler(embeddings [B, T, D], valid [B, T] bool, queries [Q, 2] of (b, t), K)
        -> LongTensor [Q, K'] of flat indices into the B*T positions, -1 for none

and never returns a query's own position (its positive) nor an invalid
(padded) position. Negatives are drawn without replacement: a query gets
min(K, its number of candidates) of them, and K' = min(K, the most candidates
any query has); a query with fewer candidates than K' has -1 in the columns
left over, which MEP leaves out of the InfoNCE denominator. Current-Sequence
in the paper's setting (T = 10 clips, K = 16) thus has 9 distinct negatives, each
counted once, rather than 16 draws that repeat some of the 9. The four samplers are
the paper's comparison:

- ``current_sequence``: positions of the query's own video only (all hard);
- ``current_minibatch``: uniform over the minibatch (many easy);
- ``cans_similar``: P(j) ∝ exp(cos(x_q, x_j) / temperature) over the minibatch,
  content-aware negative sampling (CANS) favouring hard negatives;
- ``cans_dissimilar``: P(j) ∝ exp(-cos(x_q, x_j) / temperature), the ablation.

CANS: the paper says only that the probability of drawing x_j grows (Similar) or
shrinks (Dissimilar) with Sim(x_q, x_j) on the CNN embedding space. The suite's
choices: Sim is the cosine of the CNN tokens (after the projection and LayerNorm,
the MEP targets), the distribution a softmax over the candidates at temperature
``objective.temperature`` (1 by default: a cosine 1 higher makes a draw e times likelier,
so every candidate keeps a chance and the nearest are favoured), draws without replacement
(successive draws renormalise over the candidates left). docs/learning.md has what 0.1, 0.3
and 1 do on the scenes world.
Similarities are computed on detached CNN embeddings: sampling is not
differentiable and must not steer the CNN.

The candidates are the positions of the rank's own minibatch (``objective.
negatives_scope: rank``), or those of every rank's (``global``: the tokens are
gathered from all ranks, without gradient for the other ranks' ones;
``avbert.objectives.mep``).

Randomness is state: each sampler holds a seed and a draw counter as buffers
and draws from a generator seeded from (seed, stream, counter, rank), so a
sampler restored from a ``state_dict`` continues with exactly the draws the
original would have made.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Fold integers into one well-spread 64-bit seed (splitmix64 finaliser)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state


def current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class SeededDraws(nn.Module):
    """A seed and a draw counter, checkpointed as buffers.

    ``next_generator`` returns a fresh generator for the next draw and
    advances the counter. ``stream`` separates independent users of the same
    seed (samplers, masking, pair making).
    """

    def __init__(self, seed: int = 0, stream: int = 0):
        super().__init__()
        self.stream = stream
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.long))
        self.register_buffer("draws", torch.tensor(0, dtype=torch.long))

    def next_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(mix_seed(self.seed.item(), self.stream, self.draws.item(), current_rank()))
        self.draws.add_(1)
        return generator

    def extra_repr(self) -> str:
        return f"stream={self.stream}"


def draw_indices(weights: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """Draw up to ``num`` column indices per row of non-negative ``weights`` [Q, N], without
    replacement -> LongTensor [Q, K], K = min(num, the most candidates any row has).

    A row with fewer than K candidates (positive weights) gets all of them, in drawn order,
    and -1 in its remaining columns: a negative is never drawn twice, so no candidate
    counts more than once in the InfoNCE denominator.
    """
    available = (weights > 0).sum(dim=1)
    if bool((available == 0).any()):
        raise ValueError("a query has no candidate negative (its video or minibatch has no other valid position)")
    width = int(min(num, int(available.max())))
    out = torch.full((weights.shape[0], width), -1, dtype=torch.long, device=weights.device)
    drawn = available.clamp(max=width)
    for count in drawn.unique().tolist():
        rows = drawn == count
        out[rows, :count] = torch.multinomial(weights[rows], count, replacement=False, generator=generator)
    return out


class NegativeSampler(SeededDraws):
    """Base class: candidates are the valid positions other than the query's own."""

    STREAM = 1

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed, stream=self.STREAM)

    def candidates(self, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """bool [Q, B*T]: valid positions except each query's own."""
        batch, clips = valid.shape
        own = queries[:, 0] * clips + queries[:, 1]
        allowed = valid.reshape(1, batch * clips).expand(queries.shape[0], -1).clone()
        allowed[torch.arange(queries.shape[0], device=valid.device), own] = False
        return allowed

    def weights(self, embeddings: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Unnormalised sampling weights [Q, B*T], zero outside the candidates."""
        return self.candidates(valid, queries).float()

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor,
                num_negatives: int) -> torch.Tensor:
        embeddings = embeddings.detach()
        with torch.autocast(embeddings.device.type, enabled=False):  # similarities in fp32
            weights = self.weights(embeddings, valid.bool(), queries.long())
        return draw_indices(weights, num_negatives, self.next_generator(embeddings.device))


class CurrentSequenceSampler(NegativeSampler):
    """Negatives from the query's own video only."""

    def candidates(self, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        allowed = super().candidates(valid, queries)
        video_of = torch.arange(allowed.shape[1], device=valid.device) // valid.shape[1]
        return allowed & (video_of.unsqueeze(0) == queries[:, :1])


class CurrentMiniBatchSampler(NegativeSampler):
    """Negatives uniform over the valid positions of the minibatch."""


class SimilaritySampler(NegativeSampler):
    """P(j) ∝ exp(sign * cos(x_q, x_j) / temperature) over the minibatch candidates."""

    sign = 1.0

    def __init__(self, seed: int = 0, temperature: float = 1.0):
        super().__init__(seed=seed)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def weights(self, embeddings: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        flat = F.normalize(embeddings.float().reshape(-1, embeddings.shape[-1]), dim=-1)
        own = queries[:, 0] * embeddings.shape[1] + queries[:, 1]
        cosine = flat[own] @ flat.T
        logits = (self.sign / self.temperature) * cosine
        logits = logits.masked_fill(~self.candidates(valid, queries), float("-inf"))
        return torch.softmax(logits, dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


class CansSimilarSampler(SimilaritySampler):
    """CANS-Similar: favours negatives close to the query on the CNN embedding space."""

    sign = 1.0


class CansDissimilarSampler(SimilaritySampler):
    """CANS-Dissimilar: favours negatives far from the query (ablation)."""

    sign = -1.0


SAMPLERS: dict[str, type[NegativeSampler]] = {
    "current_sequence": CurrentSequenceSampler,
    "current_minibatch": CurrentMiniBatchSampler,
    "cans_similar": CansSimilarSampler,
    "cans_dissimilar": CansDissimilarSampler,
}


def build_sampler(name: str, seed: int = 0, temperature: float = 1.0) -> NegativeSampler:
    """The sampler called ``name``; ``temperature`` applies to the CANS samplers only."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    if issubclass(cls, SimilaritySampler):
        return cls(seed=seed, temperature=temperature)
    return cls(seed=seed)
