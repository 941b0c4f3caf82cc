"""Classification on top of a pretrained AVBERT: features, heads, losses.

Each downstream set reads the part of the model the paper evaluates on it:

* ``visual`` (UCF101): the visual CNN and the visual Transformer; the feature
  is the visual BOS output next to the mean of the valid visual CNN tokens;
* ``audio`` (ESC-50): the same on the audio side;
* ``multimodal`` (Kinetics-Sounds, Charades): the whole model; the feature is
  ``AVBertOutput.summary()`` (both BOS outputs of the multimodal Transformer, or
  of the unimodal ones under late fusion), as the released code reads
  Kinetics-Sounds (``DOWNSTREAM_FUSION: concat`` of the BOS outputs);
* ``multimodal_context`` (synthetic): ``summary()`` and beside it the mean of
  the last Transformers' clip outputs. Pretraining trains the BOS outputs by
  CPP alone and the clip outputs by MEP (docs/learning.md); the synthetic class
  is a pattern of events that MEP learns to read from context, so its probe
  reads both. The paper never evaluated this set: the choice is the suite's.

Under early fusion there are no unimodal Transformers, so ``visual`` and
``audio`` fall back to the mean CNN token. Only the CNN (and Transformer) of
the modality a unimodal feature reads are run.

Two protocols: ``finetune`` trains the model and a dropout + linear head;
``linear`` freezes the model (kept in eval mode, run without gradients) and
trains a linear classifier on batch-normalised features. Single-label sets use
softmax cross-entropy, multi-label sets (Charades) per-class binary
cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from avbert.models.avbert import AVBert

TASK_FEATURE = {
    "ucf101": "visual",
    "esc50": "audio",
    "kinetics_sounds": "multimodal",
    "charades": "multimodal",
    "synthetic": "multimodal_context",
}
FEATURES = ("visual", "audio", "multimodal", "multimodal_context")
MULTILABEL_TASKS = frozenset({"charades"})


def feature_dim(model: AVBert, feature: str) -> int:
    """Width of the feature vector ``feature`` of ``model``."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; allowed: {', '.join(map(repr, FEATURES))}")
    if feature == "multimodal_context":
        return 3 * model.width
    if feature == "multimodal" or model.fusion != "early":
        return 2 * model.width
    return model.width


def _masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def unimodal_feature(model: AVBert, clips: torch.Tensor, valid: torch.Tensor, modality: str) -> torch.Tensor:
    """[B, 2D] (or [B, D] under early fusion) from one modality's clips only."""
    encoder = model.visual_cnn if modality == "visual" else model.audio_cnn
    tokens = encoder(clips)
    pooled = _masked_mean(tokens, valid)
    if model.fusion == "early":
        return pooled
    hidden = model.transformers[modality](*model.embeddings[modality]([tokens], [valid]))
    return torch.cat([hidden[:, 0], pooled], dim=-1)


def extract_feature(model: AVBert, batch: dict, feature: str) -> torch.Tensor:
    """The feature vector of every video of ``batch`` (``video``, ``audio``, ``valid``)."""
    valid = batch.get("valid")
    reference = batch["video"] if feature != "audio" else batch["audio"]
    if valid is None:
        valid = torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
    valid = valid.bool()
    if feature == "visual":
        return unimodal_feature(model, batch["video"], valid, "visual")
    if feature == "audio":
        return unimodal_feature(model, batch["audio"], valid, "audio")
    out = model(batch["video"], batch["audio"], valid)
    if feature == "multimodal_context":
        return torch.cat([out.summary(), clip_outputs_mean(out)], dim=-1)
    return out.summary()


def clip_outputs_mean(out) -> torch.Tensor:
    """[B, D]: the mean of the last Transformers' outputs at the valid clips of both
    modalities (the multimodal Transformer's, or the two unimodal ones under late fusion)."""
    t = out.valid.shape[1]
    if out.multimodal_hidden is not None:
        hidden = out.multimodal_hidden
        clips = torch.cat([hidden[:, 1:1 + t], hidden[:, 2 + t:]], dim=1)
    else:
        clips = torch.cat([out.visual_hidden[:, 1:], out.audio_hidden[:, 1:]], dim=1)
    return _masked_mean(clips, torch.cat([out.valid, out.valid], dim=1))


def build_head(in_dim: int, num_classes: int, protocol: str, dropout: float = 0.5) -> nn.Module:
    """Fine-tuning: dropout + linear. Linear evaluation: parameter-free batch
    normalisation of the frozen features + linear (as in MAE's linear probe)."""
    if protocol == "finetune":
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    elif protocol == "linear":
        head = nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), nn.Linear(in_dim, num_classes))
    else:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: 'finetune', 'linear'")
    nn.init.normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


class DownstreamClassifier(nn.Module):
    """A pretrained AVBERT with a classification head for one downstream set.

    ``forward(batch)`` returns ``{"loss", "acc"}`` (accuracy of the arg-max
    for single-label sets, of thresholded sigmoids for multi-label ones) and
    never calls backward; ``predict(batch)`` returns class probabilities.
    """

    def __init__(self, model: AVBert, num_classes: int, feature: str, protocol: str, multilabel: bool):
        super().__init__()
        self.model = model
        self.feature, self.protocol, self.multilabel = feature, protocol, multilabel
        self.head = build_head(feature_dim(model, feature), num_classes, protocol)
        if protocol == "linear":
            self.model.requires_grad_(False)
        self.train()  # a module is built in training mode: put the frozen model in eval mode now

    def train(self, mode: bool = True) -> "DownstreamClassifier":
        """The frozen model of linear evaluation stays in eval mode (no dropout,
        fixed batch-norm statistics) while the head trains."""
        super().train(mode)
        if self.protocol == "linear":
            self.model.eval()
        return self

    def features(self, batch: dict) -> torch.Tensor:
        if self.protocol == "linear":
            with torch.no_grad():
                return extract_feature(self.model, batch, self.feature).float()
        return extract_feature(self.model, batch, self.feature)

    def logits(self, batch: dict) -> torch.Tensor:
        features = self.features(batch)
        return self.head(features.to(self.head[1].weight.dtype))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(batch).float()
        labels = batch["label"]
        if self.multilabel:
            targets = labels.float()
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            acc = ((logits > 0) == targets.bool()).float().mean()
        else:
            loss = F.cross_entropy(logits, labels.long())
            acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc}

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """Class probabilities [B, C]: sigmoid (multi-label) or softmax."""
        logits = self.logits(batch).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
