"""Parameter counts by part, each shared tensor counted once.

"transformers" counts the three Transformers with their embeddings (BOS
tokens, positions, modality types, embedding LayerNorms); "cnns" counts the
visual and audio CNNs with their token projections (linear + LayerNorm).
Objective heads (MEP scorers, CPP head, mask embeddings) belong to the
pretraining objective and are not part of the model.
"""

from __future__ import annotations

from torch import nn

from avbert.config import ModelConfig, SharingConfig

# The paper's sharing table: variant name -> (layers, modalities).
SHARING_VARIANTS = {
    "none": ("none", "none"),
    "xl": ("cross_layer", "none"),
    "xl-all": ("cross_layer", "all"),
    "xl-part": ("cross_layer", "lowrank"),
}
PAPER_TRANSFORMER_PARAMS_M = {"none": 128, "xl": 21, "xl-all": 7, "xl-part": 4}


def _unique_count(*modules: nn.Module) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{"transformers", "cnns", "total"} for an AVBert model."""
    transformers = _unique_count(model.transformers, model.embeddings)
    cnns = _unique_count(model.visual_cnn, model.audio_cnn)
    return {"transformers": transformers, "cnns": cnns, "total": _unique_count(model)}


def count_cnn_parameters(model: nn.Module) -> dict[str, int]:
    """{"visual", "audio", "projections", "cnns"} for an AVBert model: the visual and
    audio ResNets alone, their two token projections (linear + LayerNorm) together, and
    the sum (``count_parameters``'s "cnns")."""
    visual, audio = _unique_count(model.visual_cnn.cnn), _unique_count(model.audio_cnn.cnn)
    cnns = _unique_count(model.visual_cnn, model.audio_cnn)
    return {"visual": visual, "audio": audio, "projections": cnns - visual - audio, "cnns": cnns}


def sharing_variant(base: ModelConfig, name: str) -> ModelConfig:
    """``base`` with the sharing of one row of the paper's table."""
    from dataclasses import replace

    layers, modalities = SHARING_VARIANTS[name]
    return replace(base, sharing=SharingConfig(layers=layers, modalities=modalities, rank=base.sharing.rank))
