"""Attention kernels: ``scaled_dot_product_attention`` against matmul-softmax.

Both compute the model's attention over the multimodal Transformer's sequence
(batch x heads x (2+2T) tokens x head width, with the boolean keep mask the
model passes), forward and backward, without dropout so that both do the same
arithmetic. The plain version is the textbook ``softmax(QK^T/sqrt(d) + mask) V``
in three tensor ops, each materialising its [B, H, S, S] result.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from avbert.bench.layers import LayerShape
from avbert.bench.timing import TimingPlan, compare


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked where ``keep`` is False) v."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def attention_inputs(shape: LayerShape, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, H, S, W/H] with gradients, and the keep mask [B, 1, 1, S]."""
    generator = torch.Generator().manual_seed(seed)
    size = (shape.batch, shape.heads, shape.tokens, shape.width // shape.heads)
    q, k, v = (torch.randn(size, generator=generator).requires_grad_() for _ in range(3))
    keep = torch.ones(shape.batch, 1, 1, shape.tokens, dtype=torch.bool)
    return q, k, v, keep


def forward_backward(attention: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    q, k, v, keep = inputs

    def call() -> None:
        attention(q, k, v, keep).sum().backward()
        for t in (q, k, v):
            t.grad = None

    return call


def run(shape: LayerShape, plan: TimingPlan) -> dict:
    """SDPA against plain attention, as one JSON-ready record."""
    inputs = attention_inputs(shape)
    with torch.no_grad():
        difference = (sdpa_attention(*inputs) - plain_attention(*inputs)).abs().max().item()
    comparison = compare(
        "attention forward + backward: SDPA / matmul-softmax",
        ("matmul_softmax", forward_backward(plain_attention, inputs)),
        ("sdpa", forward_backward(sdpa_attention, inputs)),
        plan,
    )
    return {
        "shape": {"batch": shape.batch, "heads": shape.heads, "tokens": shape.tokens,
                  "head_width": shape.width // shape.heads},
        "timing_plan": plan.to_dict(),
        "comparison": comparison.to_dict(),
        "max_abs_difference": difference,
    }
