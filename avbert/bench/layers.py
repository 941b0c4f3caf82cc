"""One shared Transformer layer: lowrank ("Part") sharing against the dense shared layer.

Both layers are the model's own ``TransformerLayer`` over the maps that
``build_maps`` gives one modality group: ``lowrank`` (every map
``U S V^T`` with ``S = exp(A - A^T)``) and ``all`` (dense maps, the "XL + All"
row). One step is a forward pass over a [batch, 2+2T, width] sequence (the
multimodal Transformer's length), a backward pass and a torch AdamW step over
the layer's parameters, in fp32 with dropout on, as in training.

Besides the two steps, what bounds the ratio: the time of the six matrix
exponentials (forward + backward) that the lowrank layer evaluates on every
call, timed alone in the same interleaved rounds, and (``layer_breakdown``)
the parameters each step updates and the FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` for forward + backward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from avbert.bench.timing import Comparison, TimingPlan, time_interleaved
from avbert.models.sharing import MAP_NAMES, build_maps
from avbert.models.transformer import TransformerLayer

LAYER_TARGET_RATIO = 0.8  # lowrank step <= 0.8x the dense shared layer


@dataclass(frozen=True)
class LayerShape:
    """The paper's Transformer at T clips: width 768, FFN 3072, 12 heads, rank 128."""

    width: int = 768
    ffn: int = 3072
    heads: int = 12
    rank: int = 128
    clips: int = 10
    batch: int = 8
    dropout: float = 0.1

    @property
    def tokens(self) -> int:
        """The multimodal Transformer's sequence: BOS_v, T visual, BOS_a, T audio."""
        return 2 + 2 * self.clips

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens}


def build_layer(sharing: str, shape: LayerShape) -> TransformerLayer:
    """The shared layer of one modality group under ``sharing`` ('lowrank' or 'all')."""
    maps = build_maps(["multimodal"], sharing, shape.width, shape.ffn, shape.rank)["multimodal"]
    return TransformerLayer(maps, shape.width, shape.heads, shape.dropout).train()


def layer_inputs(shape: LayerShape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.batch, shape.tokens, shape.width, generator=generator)
    keep = torch.ones(shape.batch, shape.tokens, dtype=torch.bool)
    return x, keep


def training_step(layer: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> Callable[[], None]:
    """forward + backward + AdamW step of ``layer``, as a closure."""
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)

    def step() -> None:
        layer(x, keep).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def six_matrix_exponentials(layer: TransformerLayer) -> Callable[[], None]:
    """The layer's own ``S = exp(A - A^T)`` of its six maps, forward + backward, alone."""
    rotations = [layer.maps[name].rotation for name in MAP_NAMES]

    def call() -> None:
        sum(rotation().sum() for rotation in rotations).backward()
        for rotation in rotations:
            rotation.generator.grad = None

    return call


def compare_layers(shape: LayerShape, plan: TimingPlan) -> tuple[Comparison, float]:
    """Step time of the lowrank shared layer against the dense shared layer, and the
    seconds of the lowrank layer's matrix exponentials, all timed in the same rounds."""
    torch.manual_seed(0)
    x, keep = layer_inputs(shape)
    lowrank = build_layer("lowrank", shape)
    timings = time_interleaved({
        "dense": training_step(build_layer("all", shape), x, keep),
        "lowrank": training_step(lowrank, x, keep),
        "matrix_exp": six_matrix_exponentials(lowrank),
    }, plan)
    comparison = Comparison("shared layer step: lowrank / dense", timings["dense"], timings["lowrank"],
                            LAYER_TARGET_RATIO)
    return comparison, timings["matrix_exp"].median


def count_flops(layer: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        layer(x, keep).square().mean().backward()
    layer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def layer_breakdown(shape: LayerShape) -> dict:
    """Parameters and FLOPs of both layers."""
    x, keep = layer_inputs(shape)
    out = {}
    for sharing in ("all", "lowrank"):
        layer = build_layer(sharing, shape)
        out[sharing] = {
            "parameters": sum(p.numel() for p in layer.parameters()),
            "flops_forward_backward": count_flops(layer, x, keep),
        }
    out["flops_ratio"] = out["lowrank"]["flops_forward_backward"] / out["all"]["flops_forward_backward"]
    return out


def run(shape: LayerShape, plan: TimingPlan) -> dict:
    """The comparison and its breakdown, as one JSON-ready record."""
    comparison, matrix_exp_s = compare_layers(shape, plan)
    breakdown = layer_breakdown(shape)
    breakdown["lowrank"]["matrix_exp_s"] = matrix_exp_s
    return {
        "shape": shape.to_dict(),
        "timing_plan": plan.to_dict(),
        "comparison": comparison.to_dict(),
        "breakdown": breakdown,
    }
