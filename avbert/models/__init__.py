"""The AVBERT model: clip CNNs and Transformers with parameter sharing."""

from avbert.models.avbert import AVBert, AVBertOutput
from avbert.models.params import (
    PAPER_TRANSFORMER_PARAMS_M,
    SHARING_VARIANTS,
    count_cnn_parameters,
    count_parameters,
    sharing_variant,
)

__all__ = [
    "AVBert", "AVBertOutput", "PAPER_TRANSFORMER_PARAMS_M", "SHARING_VARIANTS", "count_cnn_parameters",
    "count_parameters", "sharing_variant",
]
