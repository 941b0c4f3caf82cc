"""BERT-style post-LayerNorm Transformers with the paper's sharing schemes.

``build_transformers`` returns one ``Transformer`` per modality group
("visual", "audio", "multimodal"). Layers are shared by reference: under
``cross_layer`` a Transformer applies one layer ``L`` times (ALBERT); across
groups the linear maps are shared as ``avbert.models.sharing`` describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from avbert.config import SharingConfig, TransformerConfig
from avbert.models.sharing import build_maps, computed_once


class TransformerLayer(nn.Module):
    """Self-attention and FFN, each followed by dropout, residual and LayerNorm."""

    def __init__(self, maps: nn.ModuleDict, width: int, heads: int, dropout: float):
        super().__init__()
        self.maps = maps
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(width, eps=1e-12)
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)

    def attention(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = (split(self.maps[n](x)) for n in ("query", "key", "value"))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.maps["attn_out"](out.transpose(1, 2).reshape(b, s, d))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, S, D]; keep [B, S] bool, False at padded positions."""
        x = self.attn_norm(x + F.dropout(self.attention(x, keep), self.dropout, self.training))
        hidden = F.gelu(self.maps["ffn_in"](x))
        out = self.maps["ffn_out"](F.dropout(hidden, self.dropout, self.training))
        return self.ffn_norm(x + F.dropout(out, self.dropout, self.training))


class Transformer(nn.Module):
    """A stack of (possibly shared) layers over already-embedded inputs."""

    def __init__(self, layers: list[TransformerLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training:
            for layer in self.layers:  # each layer recomputes its maps in the backward pass
                x = checkpoint(layer, x, keep, use_reentrant=False)
            return x
        with computed_once(self):  # a shared layer's orthogonal S once per pass, not once per layer
            for layer in self.layers:
                x = layer(x, keep)
        return x


def build_transformers(groups: list[str], cfg: TransformerConfig, sharing: SharingConfig) -> nn.ModuleDict:
    """One Transformer per group with the configured layer and modality sharing."""
    slots = 1 if sharing.layers == "cross_layer" else cfg.layers
    per_slot = [build_maps(groups, sharing.modalities, cfg.width, cfg.ffn, sharing.rank, cfg.init_std)
                for _ in range(slots)]
    transformers = {}
    for group in groups:
        slot_layers = [TransformerLayer(maps[group], cfg.width, cfg.heads, cfg.dropout) for maps in per_slot]
        transformers[group] = Transformer([slot_layers[i % slots] for i in range(cfg.layers)])
    return nn.ModuleDict(transformers)


class SequenceEmbedding(nn.Module):
    """Adds a learned BOS token per segment, learned positions (restarting at
    0 in each segment) and, with several segments, segment (modality) types;
    then LayerNorm and dropout as in BERT."""

    def __init__(self, width: int, max_clips: int, segments: int, dropout: float, add_bos: bool):
        super().__init__()
        self.add_bos = add_bos
        self.bos = nn.Parameter(torch.randn(segments, width) * 0.02) if add_bos else None
        self.position = nn.Embedding(max_clips + 1, width)
        self.segment = nn.Embedding(segments, width) if segments > 1 else None
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.position.weight, std=0.02)
        if self.segment is not None:
            nn.init.normal_(self.segment.weight, std=0.02)

    def forward(self, parts: list[torch.Tensor], keeps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """parts: [B, S_i, D] per segment; keeps: [B, S_i] bool. Returns the
        embedded sequence and its keep mask (BOS positions always kept)."""
        xs, ks = [], []
        for i, (x, keep) in enumerate(zip(parts, keeps)):
            if self.add_bos:
                x = torch.cat([self.bos[i].to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
                keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
            if x.shape[1] > self.position.num_embeddings:
                raise ValueError(
                    f"sequence of {x.shape[1]} tokens exceeds the {self.position.num_embeddings} learned "
                    "positions (raise model.transformer.max_clips)"
                )
            x = x + self.position.weight[: x.shape[1]].to(x.dtype)
            if self.segment is not None:
                x = x + self.segment.weight[i].to(x.dtype)
            xs.append(x)
            ks.append(keep)
        return self.dropout(self.norm(torch.cat(xs, dim=1))), torch.cat(ks, dim=1)
