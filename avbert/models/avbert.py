"""The audio-visual model: clip CNNs, unimodal and multimodal Transformers.

A video of T clips becomes T visual and T audio tokens (one per clip, from
the CNNs). Fusion decides what runs on them:

* ``mid`` (the paper's model): a visual and an audio Transformer over
  ``[BOS, x_1..x_T]`` each, then a multimodal Transformer over the
  concatenation of their outputs with modality embeddings;
* ``early``: one multimodal Transformer over both token sequences;
* ``late``: only the two unimodal Transformers.

The forward pass is split in stages (``tokenize``, ``encode_unimodal``,
``fuse``) so that objectives can mask tokens and swap pairs in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from avbert.config import ModelConfig
from avbert.models.cnn import ClipEncoder, audio_encoder, visual_encoder
from avbert.models.transformer import SequenceEmbedding, build_transformers

GROUPS_BY_FUSION = {"early": ["multimodal"], "mid": ["visual", "audio", "multimodal"], "late": ["visual", "audio"]}


@dataclass
class AVBertOutput:
    """Everything the forward pass computed, by name.

    Shapes (B videos, T clips, D width):
    visual_tokens, audio_tokens: [B, T, D] CNN tokens;
    visual_hidden, audio_hidden: [B, 1+T, D] (BOS first), None for early fusion;
    multimodal_hidden: [B, 2+2T, D] laid out [BOS_v, v_1..v_T, BOS_a, a_1..a_T],
    None for late fusion; valid: [B, T] bool, False at padded clips.
    """

    visual_tokens: torch.Tensor
    audio_tokens: torch.Tensor
    visual_hidden: Optional[torch.Tensor]
    audio_hidden: Optional[torch.Tensor]
    multimodal_hidden: Optional[torch.Tensor]
    valid: torch.Tensor

    def summary(self) -> torch.Tensor:
        """One vector per video for classification heads: the BOS outputs of
        the last Transformers (multimodal BOS_v and BOS_a, or both unimodal
        BOS for late fusion), concatenated: [B, 2D]."""
        if self.multimodal_hidden is not None:
            t = self.valid.shape[1]
            return torch.cat([self.multimodal_hidden[:, 0], self.multimodal_hidden[:, 1 + t]], dim=-1)
        return torch.cat([self.visual_hidden[:, 0], self.audio_hidden[:, 0]], dim=-1)


class AVBert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer
        self.fusion = cfg.fusion
        self.width = tcfg.width
        self.visual_cnn = visual_encoder(cfg.visual, tcfg.width)
        self.audio_cnn = audio_encoder(cfg.audio, tcfg.width)
        groups = GROUPS_BY_FUSION[cfg.fusion]
        self.transformers = build_transformers(groups, tcfg, cfg.sharing)
        embeddings = {}
        for group in groups:
            segments = 2 if group == "multimodal" else 1
            add_bos = group != "multimodal" or cfg.fusion == "early"
            embeddings[group] = SequenceEmbedding(tcfg.width, tcfg.max_clips, segments, tcfg.dropout, add_bos)
        self.embeddings = nn.ModuleDict(embeddings)

    # -- stages ---------------------------------------------------------------
    def tokenize(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,T,3,F,H,W], audio [B,T,1,M,N] -> CNN tokens [B,T,D] each."""
        return self.visual_cnn(video), self.audio_cnn(audio)

    def encode_unimodal(
        self, v_tok: torch.Tensor, a_tok: torch.Tensor, valid: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Unimodal Transformers: [B,T,D] tokens -> [B,1+T,D] (None for early fusion)."""
        if self.fusion == "early":
            return None, None
        return self._run("visual", [v_tok], [valid]), self._run("audio", [a_tok], [valid])

    def fuse(
        self, v_seq: torch.Tensor, a_seq: torch.Tensor, v_valid: torch.Tensor, a_valid: torch.Tensor
    ) -> Optional[torch.Tensor]:
        """Multimodal Transformer. mid: v_seq/a_seq are unimodal outputs
        [B,1+T,D]; early: CNN tokens [B,T,D]. valid masks are [B,T].
        Returns [B,2+2T,D], or None for late fusion."""
        if self.fusion == "late":
            return None
        keeps = [v_valid, a_valid]
        if self.fusion == "mid":
            keeps = [torch.cat([k.new_ones(k.shape[0], 1), k], dim=1) for k in keeps]
        return self._run("multimodal", [v_seq, a_seq], keeps)

    def _run(self, group: str, parts: list[torch.Tensor], keeps: list[torch.Tensor]) -> torch.Tensor:
        x, keep = self.embeddings[group](parts, keeps)
        return self.transformers[group](x, keep)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, valid: Optional[torch.Tensor] = None) -> AVBertOutput:
        v_tok, a_tok = self.tokenize(video, audio)
        if valid is None:
            valid = torch.ones(v_tok.shape[:2], dtype=torch.bool, device=v_tok.device)
        return self.encode(v_tok, a_tok, valid)

    def encode(self, v_tok: torch.Tensor, a_tok: torch.Tensor, valid: torch.Tensor) -> AVBertOutput:
        """Every Transformer over CNN tokens [B,T,D] (the forward pass after ``tokenize``)."""
        v_hid, a_hid = self.encode_unimodal(v_tok, a_tok, valid)
        if self.fusion == "early":
            m_hid = self.fuse(v_tok, a_tok, valid, valid)
        else:
            m_hid = self.fuse(v_hid, a_hid, valid, valid)
        return AVBertOutput(v_tok, a_tok, v_hid, a_hid, m_hid, valid)

    # -- memory/speed switches --------------------------------------------------
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute CNN stages and Transformer layers in the backward pass."""
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enabled

    def set_channels_last(self, enabled: bool = True) -> None:
        """Run the visual and audio CNNs channels-last (``ClipEncoder.set_channels_last``)."""
        for module in self.modules():
            if isinstance(module, ClipEncoder):
                module.set_channels_last(enabled)
