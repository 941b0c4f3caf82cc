"""Self-supervised objectives: MEP with InfoNCE and negative samplers, CPP, and
the pretrainer that composes them with an AVBERT model."""

from avbert.objectives.cpp import PairHead, choose_swapped_modality, make_pairs, swap_pairs
from avbert.objectives.infonce import EmbeddingScorer, info_nce, info_nce_from_scores
from avbert.objectives.masking import choose_positions, mask_tokens
from avbert.objectives.mep import masked_embedding_prediction
from avbert.objectives.pretraining import AVBertPretrainer, ObjectiveConfig
from avbert.objectives.samplers import (
    SAMPLERS,
    CansDissimilarSampler,
    CansSimilarSampler,
    CurrentMiniBatchSampler,
    CurrentSequenceSampler,
    NegativeSampler,
    SeededDraws,
    build_sampler,
)

__all__ = [
    "AVBertPretrainer", "CansDissimilarSampler", "CansSimilarSampler", "CurrentMiniBatchSampler",
    "CurrentSequenceSampler", "EmbeddingScorer", "NegativeSampler", "ObjectiveConfig", "PairHead",
    "SAMPLERS", "SeededDraws", "build_sampler", "choose_positions", "choose_swapped_modality",
    "info_nce", "info_nce_from_scores", "make_pairs", "mask_tokens", "masked_embedding_prediction",
    "swap_pairs",
]
