"""Parameter sharing across the three Transformers.

``modalities: none`` gives each Transformer its own dense linear maps;
``all`` hands the same dense maps to all three; ``lowrank`` (the paper's
"Part") factorises every map as ``W = U S V^T``:

* ``V`` (in -> rank, no bias) is private to a modality group,
* ``S`` (rank x rank) is private and exactly orthogonal, ``S = exp(A - A^T)``
  (the matrix exponential of a skew-symmetric matrix, as in the released code),
* ``U`` (rank -> out, with bias) is shared by the visual, audio and
  multimodal Transformers,

with an L2 normalisation between ``V`` and ``S`` as in the released code.
Parameters per map: ``(in + out + rank) * rank + out``.

LayerNorms are always private to a modality group: their statistics differ
between modalities and they cost 4 * width parameters per layer.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MAP_NAMES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def map_shapes(width: int, ffn: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear map of a Transformer layer."""
    return {
        "query": (width, width),
        "key": (width, width),
        "value": (width, width),
        "attn_out": (width, width),
        "ffn_in": (width, ffn),
        "ffn_out": (ffn, width),
    }


class Orthogonal(nn.Module):
    """An exactly orthogonal matrix ``exp(A - A^T)``; identity at init.

    Inside ``computed_once`` the matrix is computed on entry and reused by every
    call, so a cross-layer-shared layer applied ``L`` times runs one matrix
    exponential (and one backward through it) instead of ``L``.
    """

    def __init__(self, size: int):
        super().__init__()
        self.generator = nn.Parameter(torch.zeros(size, size))
        self.cached: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        if self.cached is not None:
            return self.cached
        a = self.generator.float()
        return torch.linalg.matrix_exp(a - a.T)


@contextmanager
def computed_once(module: nn.Module):
    """Every ``Orthogonal`` of ``module`` is computed once on entry and reused until exit.

    Not for code that recomputes its forward in the backward pass (activation
    checkpointing): the recomputation, outside the block, would build a different graph.
    """
    rotations = [m for m in module.modules() if isinstance(m, Orthogonal)]
    for rotation in rotations:
        rotation.cached = rotation()  # through __call__, so ZeRO-3 gathers the generator
    try:
        yield
    finally:
        for rotation in rotations:
            rotation.cached = None


class LowRankLinear(nn.Module):
    """``x -> U(S(normalize(V x)))`` with ``U`` shared between modality groups."""

    def __init__(self, shared_up: nn.Linear, in_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)  # V, private
        self.rotation = Orthogonal(rank)  # S, private
        self.up = shared_up  # U, shared
        # V x is L2-normalised, so V's scale never reaches the output; under Adam
        # it only sets V's relative step (about lr / std). A 0.02 init makes
        # that ~10% a step at lr 2e-3 and V's direction wanders; unit variance
        # keeps it steady (measured: CPP on event tokens learns in 5 of 6 seeds
        # with std 1, 2 of 6 with std 0.02).
        nn.init.normal_(self.down.weight, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.down(x), dim=-1)
        s = self.rotation().to(h.dtype)
        return self.up(h @ s.T)


def dense(in_features: int, out_features: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


def _shared_up(rank: int, in_features: int, out_features: int, std: float) -> nn.Linear:
    # V x is normalised to unit length, so U's init is scaled by sqrt(in) to
    # give outputs the magnitude a dense map (std ``std``) gives a LayerNormed x.
    layer = dense(rank, out_features, std)
    nn.init.normal_(layer.weight, std=std * in_features**0.5)
    return layer


def build_maps(groups: list[str], modalities: str, width: int, ffn: int, rank: int,
               init_std: float = 0.02) -> dict[str, nn.ModuleDict]:
    """The six linear maps of one layer slot for each modality group; dense
    weights start at std ``init_std`` (``TransformerConfig.init_std``).

    Returns group -> ModuleDict(map name -> module); modules are the same
    objects across groups where the scheme shares them.
    """
    shapes = map_shapes(width, ffn)
    if modalities == "none":
        return {g: nn.ModuleDict({n: dense(*shapes[n], init_std) for n in MAP_NAMES}) for g in groups}
    if modalities == "all":
        maps = nn.ModuleDict({n: dense(*shapes[n], init_std) for n in MAP_NAMES})
        return {g: maps for g in groups}
    if modalities == "lowrank":
        shared_up = {n: _shared_up(rank, *shapes[n], init_std) for n in MAP_NAMES}
        return {
            g: nn.ModuleDict({n: LowRankLinear(shared_up[n], shapes[n][0], rank) for n in MAP_NAMES})
            for g in groups
        }
    raise ValueError(f"unknown modality sharing {modalities!r}; allowed values: 'none', 'all', 'lowrank'")
