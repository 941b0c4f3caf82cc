"""Self-supervised pretraining: an AVBERT model composed with MEP and CPP.

One forward pass:

1. The CNNs turn the clips into tokens x^v, x^a [B, T, D].
2. BERT-style masking replaces about 15% of each modality's tokens (learned
   mask embedding, one per modality, held here).
3. The unimodal Transformers (mid and late fusion) run once on the masked
   tokens; MEP scores their outputs at the masked positions against the
   unmasked CNN tokens.
4. CPP makes about half of the pairs false by giving a sample another
   video's visual or audio sequence, at the multimodal input: the unimodal
   outputs (mid fusion) or the masked tokens (early fusion). The multimodal
   Transformer fuses the pairs; MEP scores both of its halves, on real pairs
   only, and the CPP head reads its two BOS outputs. Late fusion has no
   multimodal Transformer: the CPP head reads the (paired) unimodal BOS
   outputs.

``forward`` returns ``loss`` (the weighted sum) and every term as
``<term>/loss`` and ``<term>/acc``; terms whose Transformer the fusion lacks
(``mep_visual`` and ``mep_audio`` for early fusion, ``mep_multimodal`` for
late fusion) are absent. It never calls backward.
"""

from __future__ import annotations

import torch
from torch import nn

from avbert.config.schema import ObjectiveConfig
from avbert.objectives.cpp import PairHead, choose_swapped_modality, make_pairs, swap_pairs
from avbert.objectives.infonce import EmbeddingScorer
from avbert.objectives.masking import mask_tokens
from avbert.objectives.mep import masked_embedding_prediction
from avbert.objectives.samplers import SeededDraws, build_sampler

TERMS = ("mep_visual", "mep_audio", "mep_multimodal", "cpp")


def mep_scorer_names(fusion: str) -> tuple[str, ...]:
    """One scorer per (Transformer, predicted modality) pair the fusion has."""
    unimodal = ("visual", "audio")
    multimodal = ("multimodal_visual", "multimodal_audio")
    return {"early": multimodal, "mid": unimodal + multimodal, "late": unimodal}[fusion]


def average_terms(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: (first[key] + second[key]) / 2 for key in first}


class AVBertPretrainer(nn.Module):
    """The model plus the pretraining state: mask embeddings, MEP scorers,
    the negative sampler, the CPP head and the masking/pairing draws."""

    def __init__(self, model: nn.Module, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.model = model
        self.objective = objective = objective or ObjectiveConfig()
        width, fusion = model.width, model.fusion
        self.mask_embedding = nn.ParameterDict({
            name: nn.Parameter(torch.randn(width) * 0.02) for name in ("visual", "audio")
        })
        self.scorers = nn.ModuleDict({
            name: EmbeddingScorer(width, objective.score, objective.score_temperature)
            for name in mep_scorer_names(fusion)
        })
        self.sampler = build_sampler(objective.sampler, seed=objective.seed, temperature=objective.temperature)
        self.pair_head = PairHead(2 * width, width)  # both BOS outputs, concatenated
        self.draws = SeededDraws(seed=objective.seed, stream=0)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch with ``video`` [B,T,3,F,H,W], ``audio`` [B,T,1,M,N], optional ``valid`` [B,T]."""
        video, audio = batch["video"], batch["audio"]
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
        valid = valid.bool()
        v_tok, a_tok = self.model.tokenize(video, audio)
        generator = self.draws.next_generator(v_tok.device)
        v_in, v_chosen = self._mask(v_tok, valid, "visual", generator)
        a_in, a_chosen = self._mask(a_tok, valid, "audio", generator)
        partner, is_real = make_pairs(valid.shape[0], generator, self.objective.cpp_prob, device=valid.device)
        swap_audio = choose_swapped_modality(valid.shape[0], generator, device=valid.device)

        terms: dict[str, dict[str, torch.Tensor]] = {}
        v_hid, a_hid = self.model.encode_unimodal(v_in, a_in, valid)
        if v_hid is not None:
            terms["mep_visual"] = self._mep("visual", v_hid[:, 1:], v_tok, v_chosen, valid)
            terms["mep_audio"] = self._mep("audio", a_hid[:, 1:], a_tok, a_chosen, valid)
        if self.model.fusion == "late":
            v_bos, a_bos = swap_pairs(v_hid[:, 0], a_hid[:, 0], partner, swap_audio)
        else:
            mid = self.model.fusion == "mid"
            v_seq, a_seq = swap_pairs(v_hid if mid else v_in, a_hid if mid else a_in, partner, swap_audio)
            v_valid, a_valid = swap_pairs(valid, valid, partner, swap_audio)
            m_hid = self.model.fuse(v_seq, a_seq, v_valid, a_valid)
            clips = valid.shape[1]
            real = is_real.unsqueeze(1)
            terms["mep_multimodal"] = average_terms(
                self._mep("multimodal_visual", m_hid[:, 1:1 + clips], v_tok, v_chosen & real, valid),
                self._mep("multimodal_audio", m_hid[:, 2 + clips:], a_tok, a_chosen & real, valid),
            )
            v_bos, a_bos = m_hid[:, 0], m_hid[:, 1 + clips]
        terms["cpp"] = self.pair_head(torch.cat([v_bos, a_bos], dim=-1), is_real)
        return self._collect(terms)

    def _mask(self, tokens: torch.Tensor, valid: torch.Tensor, modality: str,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.objective
        return mask_tokens(tokens, valid, self.mask_embedding[modality], generator,
                           mask_prob=cfg.mask_prob, replace=cfg.mask_replace, random=cfg.mask_random)

    def _mep(self, scorer: str, outputs: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
             valid: torch.Tensor) -> dict[str, torch.Tensor]:
        return masked_embedding_prediction(outputs, targets, chosen, valid, self.sampler,
                                           self.scorers[scorer], self.objective.num_negatives)

    def _collect(self, terms: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        weights = self.objective.weights
        out: dict[str, torch.Tensor] = {}
        out["loss"] = sum(weights.get(name, 0.0) * values["loss"] for name, values in terms.items())
        for name, values in terms.items():
            for key, value in values.items():
                out[f"{name}/{key}"] = value
        return out
