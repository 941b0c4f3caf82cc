"""Correct pair prediction (CPP).

With probability ``prob`` a sample's pair is made false: one of its two
modality sequences (visual or audio, chosen per sample at random) is replaced
by that of a different video of the minibatch. A binary head on the
multimodal BOS outputs says whether the pair is real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_pairs(batch_size: int, generator: torch.Generator, prob: float = 0.5,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """-> (partner LongTensor [B], is_real bool [B]).

    A real sample is its own partner; a false one (probability ``prob``) gets
    a partner drawn uniformly among the *other* videos. A batch of one has no
    other video, so all its pairs are real.
    """
    is_real = torch.rand(batch_size, generator=generator, device=device) >= prob
    own = torch.arange(batch_size, device=device)
    if batch_size < 2:
        return own, torch.ones_like(is_real)
    other = torch.randint(0, batch_size - 1, (batch_size,), generator=generator, device=device)
    other = other + (other >= own).long()  # skip the sample itself
    return torch.where(is_real, own, other), is_real


def choose_swapped_modality(batch_size: int, generator: torch.Generator,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """bool [B]: True where a false pair takes its audio from the partner, False its visual."""
    return torch.rand(batch_size, generator=generator, device=device) < 0.5


def swap_pairs(visual: torch.Tensor, audio: torch.Tensor, partner: torch.Tensor,
               swap_audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample tensors [B, ...] of both modalities -> the paired ones.

    Sample b becomes (visual[b], audio[partner[b]]) where ``swap_audio[b]``,
    else (visual[partner[b]], audio[b]); real samples (partner[b] == b) are
    unchanged. Also used for the validity masks.
    """
    keep = torch.arange(partner.shape[0], device=partner.device)
    visual_src = torch.where(swap_audio, keep, partner)
    audio_src = torch.where(swap_audio, partner, keep)
    return visual[visual_src], audio[audio_src]


class PairHead(nn.Module):
    """Binary real/false-pair classifier on BOS features (BERT's pooler + linear)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.pool = nn.Linear(in_dim, hidden)
        self.classify = nn.Linear(hidden, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.tanh(self.pool(features))).squeeze(-1)

    def forward(self, features: torch.Tensor, is_real: torch.Tensor) -> dict[str, torch.Tensor]:
        """features [B, in_dim], is_real bool [B] -> {"loss", "acc"}."""
        logits = self.logits(features).float()
        loss = F.binary_cross_entropy_with_logits(logits, is_real.float())
        acc = ((logits > 0) == is_real.bool()).float().mean()
        return {"loss": loss, "acc": acc.detach()}
