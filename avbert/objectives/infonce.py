"""InfoNCE for masked embedding prediction (MEP).

For a Transformer output o_t at a masked position and its true CNN token x_t,

    L = -log I(x_t, o_t) / (I(x_t, o_t) + sum_{j in neg(t)} I(x_j, o_t)),
    I(x, o) = exp(score(o, x)),

averaged over the masked positions of the minibatch. ``EmbeddingScorer``
provides the two scores the paper names: a projected dot product and a
bilinear form.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ScoreKind = Literal["projected", "bilinear"]
SCORE_KINDS = ("projected", "bilinear")


class EmbeddingScorer(nn.Module):
    """score(o, x) between Transformer outputs o and CNN tokens x.

    ``projected``: <P_o o, P_x x> / temperature with both projections
    L2-normalised, so the logits are bounded by 1/temperature whatever the
    scale of the tokens (unnormalised dot products of width-768 vectors give
    logits in the hundreds and a saturated softmax at initialisation).
    ``bilinear``: o^T W x with a learned W; its scale is learned, so no
    temperature applies.
    """

    def __init__(self, width: int, kind: ScoreKind = "projected", temperature: float = 0.1,
                 proj_dim: int | None = None):
        super().__init__()
        if kind not in SCORE_KINDS:
            raise ValueError(f"unknown score {kind!r}; valid scores: {', '.join(SCORE_KINDS)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kind = kind
        self.temperature = temperature
        if kind == "projected":
            proj_dim = proj_dim or width
            self.query_proj = nn.Linear(width, proj_dim)
            self.target_proj = nn.Linear(width, proj_dim)
        else:
            # std 1/width keeps o^T W x of order one for unit-variance (LayerNormed) inputs.
            self.weight = nn.Parameter(torch.randn(width, width) / width)

    def embed_queries(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "projected":
            return F.normalize(self.query_proj(outputs), dim=-1) / math.sqrt(self.temperature)
        return outputs @ self.weight

    def embed_targets(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "projected":
            return F.normalize(self.target_proj(tokens), dim=-1) / math.sqrt(self.temperature)
        return tokens

    def forward(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """queries [Q, D], candidates [Q, N, D] -> scores [Q, N] (float32)."""
        q = self.embed_queries(queries).float()
        c = self.embed_targets(candidates).float()
        with torch.autocast(q.device.type, enabled=False):  # logits in fp32 even under bf16 autocast
            return torch.einsum("qd,qnd->qn", q, c)


def info_nce_from_scores(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """scores [Q, 1+K] with the positive in column 0 -> {"loss", "acc"}.

    ``acc`` is the fraction of queries whose positive scores strictly above
    every negative. With no queries (Q = 0) both are 0 and ``loss`` stays
    attached to the graph, so a step without masked positions still runs.
    """
    if scores.shape[0] == 0:
        zero = scores.sum() * 0.0
        return {"loss": zero, "acc": zero.detach()}
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    loss = F.cross_entropy(scores.float(), target)
    acc = (scores[:, 0:1] > scores[:, 1:]).all(dim=1).float().mean()
    return {"loss": loss, "acc": acc.detach()}


def info_nce(scorer: nn.Module, queries: torch.Tensor, positives: torch.Tensor,
             negatives: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """queries o [Q, D], positives x [Q, D], negatives [Q, K, D] -> {"loss", "acc"}.

    ``present`` [Q, K] bool marks the negatives that exist (a query with fewer candidates
    than K has fewer); the others are left out of the denominator (score -inf)."""
    candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    scores = scorer(queries, candidates)
    if present is not None:
        keep = torch.cat([present.new_ones(present.shape[0], 1), present.bool()], dim=1)
        scores = scores.masked_fill(~keep, float("-inf"))
    return info_nce_from_scores(scores)
