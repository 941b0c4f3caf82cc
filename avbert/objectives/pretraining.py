"""Self-supervised pretraining: an AVBERT model composed with MEP and CPP.

One forward pass:

1. The CNNs turn the clips into tokens x^v, x^a [B, T, D].
2. BERT-style masking replaces about 15% of each modality's tokens (learned
   mask embedding, one per modality, held here).
3. The unimodal Transformers (mid and late fusion) run on the masked tokens;
   MEP scores their outputs at the masked positions against the unmasked CNN
   tokens.
4. The multimodal Transformer fuses each sample's own masked pair (the
   unimodal outputs under mid fusion, the masked tokens under early fusion);
   MEP scores both of its halves.
5. CPP makes about half of the pairs false by giving a sample another
   video's visual or audio sequence. With ``cpp_input: clean`` (the default)
   the Transformers run again on the unmasked tokens and those sequences are
   paired, fused, and the CPP head reads the two multimodal BOS outputs. Late
   fusion has no multimodal Transformer: the head reads the paired unimodal
   BOS outputs.

With ``cpp_input: masked`` there is no second pass: the masked sequences of
step 4 are paired before fusion, as BERT asks next-sentence prediction of its
masked input, and multimodal MEP scores the real pairs only. On the tiny
synthetic set CPP then stays near chance: with 4 clips about a third of each
modality's tokens are masked (at least one per sequence), and the per-clip
agreement that tells a real pair from a false one is what masking hides.

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
        fusion_input = self._fusion_input(v_in, a_in, v_hid, a_hid)
        if self.objective.cpp_input == "clean":
            # MEP on every sample's own (masked) pair; CPP on a second, unmasked pass.
            if fusion_input is not None:
                m_hid = self.model.fuse(*fusion_input, valid, valid)
                terms["mep_multimodal"] = self._mep_multimodal(m_hid, v_tok, a_tok, v_chosen, a_chosen, valid)
            clean_hid = self.model.encode_unimodal(v_tok, a_tok, valid)
            pair_input = clean_hid if self.model.fusion == "late" else self._fusion_input(v_tok, a_tok, *clean_hid)
            v_bos, a_bos, _ = self._pair(pair_input, valid, partner, swap_audio)
        else:
            # One pass: the masked sequences are paired; MEP scores real pairs only.
            pair_input = (v_hid, a_hid) if self.model.fusion == "late" else fusion_input
            v_bos, a_bos, m_hid = self._pair(pair_input, valid, partner, swap_audio)
            if m_hid is not None:
                real = is_real.unsqueeze(1)
                terms["mep_multimodal"] = self._mep_multimodal(m_hid, v_tok, a_tok, v_chosen & real,
                                                               a_chosen & real, valid)
        terms["cpp"] = self.pair_head(torch.cat([v_bos, a_bos], dim=-1), is_real)
        return self._collect(terms)

    def _fusion_input(self, v_tok, a_tok, v_hid, a_hid):
        """What the multimodal Transformer reads: the unimodal outputs (mid fusion), the
        tokens (early fusion), or nothing (late fusion)."""
        return {"mid": (v_hid, a_hid), "early": (v_tok, a_tok), "late": None}[self.model.fusion]

    def _pair(self, sequences, valid, partner, swap_audio):
        """Pair the two modality sequences ``[B, S, D]`` (false pairs take one modality
        from ``partner``) -> the two BOS features the CPP head reads and the multimodal
        outputs (``None`` under late fusion, where the sequences are the unimodal outputs)."""
        v_seq, a_seq = swap_pairs(*sequences, partner, swap_audio)
        if self.model.fusion == "late":
            return v_seq[:, 0], a_seq[:, 0], None
        v_valid, a_valid = swap_pairs(valid, valid, partner, swap_audio)
        m_hid = self.model.fuse(v_seq, a_seq, v_valid, a_valid)
        clips = valid.shape[1]
        return m_hid[:, 0], m_hid[:, 1 + clips], m_hid

    def _mep_multimodal(self, m_hid, v_tok, a_tok, v_chosen, a_chosen, valid) -> dict[str, torch.Tensor]:
        """MEP at both halves of the multimodal outputs ``[B, 2 + 2T, D]``, averaged."""
        clips = valid.shape[1]
        return average_terms(
            self._mep("multimodal_visual", m_hid[:, 1:1 + clips], v_tok, v_chosen, valid),
            self._mep("multimodal_audio", m_hid[:, 2 + clips:], a_tok, a_chosen, valid),
        )

    def _mask(self, tokens: torch.Tensor, valid: torch.Tensor, modality: str,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.objective
        return mask_tokens(tokens, valid, self.mask_embedding[modality], generator,
                           mask_prob=cfg.mask_prob, replace=cfg.mask_replace, random=cfg.mask_random)

    def _mep(self, scorer: str, outputs: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
             valid: torch.Tensor) -> dict[str, torch.Tensor]:
        return masked_embedding_prediction(outputs, targets, chosen, valid, self.sampler,
                                           self.scorers[scorer], self.objective.num_negatives,
                                           scope=self.objective.negatives_scope)

    def _collect(self, terms: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        weights = self.objective.weights
        out: dict[str, torch.Tensor] = {}
        out["loss"] = sum(weights.get(name, 0.0) * values["loss"] for name, values in terms.items())
        for name, values in terms.items():
            for key, value in values.items():
                out[f"{name}/{key}"] = value
        return out
