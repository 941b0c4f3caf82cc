"""Classification on top of a pretrained AVBERT: features, heads, losses.

A downstream stage reads one feature of the model (``downstream.feature``), named as
the paper's downstream table (c) names the parts of the model it evaluates: CNN
features or Transformer (BERT) outputs, visual, audio or multimodal. Only the modules
a feature names are run:

* ``v_cnn``: the visual CNN alone. Each clip's ResNet output, global-average-pooled
  over time and space (the CNN's own width: 2048 for the paper's R50), before the
  projection to the Transformer width; averaged over the video's valid clips. This is
  the released code's ``VisualClassify`` with ``USE_TRANSFORMER: False`` (UCF101, the
  paper's "V-CNN").
* ``a_cnn``: the same on the audio CNN (ESC-50, ``AudioClassify``, "A-CNN").
* ``m_cnn``: ``v_cnn`` and ``a_cnn`` side by side (both CNNs, no Transformer).
* ``v_bert``: the visual CNN, its projection and the visual Transformer; the
  Transformer's output at the BOS position. Needs the unimodal Transformers (mid or
  late fusion).
* ``a_bert``: the same on the audio side.
* ``m_bert``: the whole model; ``AVBertOutput.summary()``, the multimodal
  Transformer's two BOS outputs side by side (the two unimodal BOS outputs under late
  fusion), as the released code reads Kinetics-Sounds (``DOWNSTREAM_FUSION: concat``
  of the BOS outputs).
* ``m_context`` (the synthetic set): ``summary()`` and beside it the means of the last
  Transformers' outputs at the valid clips, the visual clips' and the audio clips'
  side by side. Pretraining trains the BOS outputs by CPP alone and the clip outputs by
  MEP (docs/learning.md); the synthetic class is a pattern of events that MEP learns to
  read from context, so its probe reads both. The two modalities' clip outputs keep
  their own weights in a linear head, as in the released code's sequence head
  (``ConcatSeqHead``: ``fc1`` on each visual position beside its BOS, ``fc2`` on each
  audio one). The paper never evaluated this set: the choice is the suite's.

Each task's default (``TASK_FEATURE``) is the paper's: UCF101 ``v_cnn``, ESC-50
``a_cnn``, Kinetics-Sounds and Charades ``m_bert``. The released code puts BERT's
pooler (a dense layer and tanh) on each BOS output before the classifier; here the
classifier reads the BOS outputs directly (``build_head``).

Two protocols: ``finetune`` trains the model and a dropout + linear head;
``linear`` freezes the model (kept in eval mode, run without gradients) and
trains a linear classifier on batch-normalised features. Single-label sets use
softmax cross-entropy (or, with ``downstream.loss: multi_margin``, the multi-class
hinge loss the released ESC-50 config trains with), multi-label sets (Charades)
per-class binary cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from avbert.models.avbert import AVBert
from avbert.models.cnn import ClipEncoder, normalize_pixels

TASK_FEATURE = {
    "ucf101": "v_cnn",
    "esc50": "a_cnn",
    "kinetics_sounds": "m_bert",
    "charades": "m_bert",
    "synthetic": "m_context",
}
FEATURES = ("v_cnn", "a_cnn", "m_cnn", "v_bert", "a_bert", "m_bert", "m_context")
UNIMODAL_TRANSFORMER_FEATURES = ("v_bert", "a_bert")
MULTILABEL_TASKS = frozenset({"charades"})
LOSSES = ("cross_entropy", "multi_margin")


def feature_modalities(feature: str) -> tuple[str, ...]:
    """The input modalities a feature reads: ``("visual",)``, ``("audio",)`` or both."""
    check_feature(feature)
    return {"v": ("visual",), "a": ("audio",), "m": ("visual", "audio")}[feature[0]]


def check_feature(feature: str, fusion: str | None = None) -> None:
    """A known feature, and one the model's fusion has the Transformers for."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; allowed: {', '.join(map(repr, FEATURES))}")
    if fusion == "early" and feature in UNIMODAL_TRANSFORMER_FEATURES:
        raise ValueError(f"feature {feature!r} reads a unimodal Transformer, which early fusion does not have; "
                         "use v_cnn, a_cnn, m_cnn or m_bert")


def feature_dim(model: AVBert, feature: str) -> int:
    """Width of the feature vector ``feature`` of ``model``."""
    check_feature(feature, model.fusion)
    cnn_width = {"v_cnn": model.visual_cnn.cnn.out_dim, "a_cnn": model.audio_cnn.cnn.out_dim}
    if feature in cnn_width:
        return cnn_width[feature]
    if feature == "m_cnn":
        return sum(cnn_width.values())
    if feature in UNIMODAL_TRANSFORMER_FEATURES:
        return model.width
    return (4 if feature == "m_context" else 2) * model.width


def _masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def cnn_feature(encoder: ClipEncoder, clips: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, C]: the CNN's pooled output per clip (before the projection to the Transformer
    width), averaged over the valid clips."""
    b, t = clips.shape[:2]
    pooled = encoder.cnn(normalize_pixels(clips.flatten(0, 1), encoder.memory_format)).view(b, t, -1)
    return _masked_mean(pooled, valid)


def unimodal_bos(model: AVBert, clips: torch.Tensor, valid: torch.Tensor, modality: str) -> torch.Tensor:
    """[B, D]: one modality's Transformer output at its BOS position (that modality's CNN and
    Transformer only)."""
    encoder = model.visual_cnn if modality == "visual" else model.audio_cnn
    hidden = model.transformers[modality](*model.embeddings[modality]([encoder(clips)], [valid]))
    return hidden[:, 0]


def extract_feature(model: AVBert, batch: dict, feature: str) -> torch.Tensor:
    """The feature vector of every video of ``batch`` (``video``, ``audio``, ``valid``)."""
    check_feature(feature, model.fusion)
    reference = batch["video"] if "video" in batch else batch["audio"]
    valid = batch.get("valid")
    if valid is None:
        valid = torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
    valid = valid.bool()
    if feature == "v_cnn":
        return cnn_feature(model.visual_cnn, batch["video"], valid)
    if feature == "a_cnn":
        return cnn_feature(model.audio_cnn, batch["audio"], valid)
    if feature == "m_cnn":
        return torch.cat([cnn_feature(model.visual_cnn, batch["video"], valid),
                          cnn_feature(model.audio_cnn, batch["audio"], valid)], dim=-1)
    if feature == "v_bert":
        return unimodal_bos(model, batch["video"], valid, "visual")
    if feature == "a_bert":
        return unimodal_bos(model, batch["audio"], valid, "audio")
    out = model(batch["video"], batch["audio"], valid)
    if feature == "m_context":
        return torch.cat([out.summary(), clip_outputs_means(out)], dim=-1)
    return out.summary()


def clip_outputs_means(out) -> torch.Tensor:
    """[B, 2D]: the mean of the last Transformers' outputs at the valid visual clips beside
    that at the valid audio clips (the multimodal Transformer's, or the two unimodal ones
    under late fusion)."""
    t = out.valid.shape[1]
    if out.multimodal_hidden is not None:
        visual, audio = out.multimodal_hidden[:, 1:1 + t], out.multimodal_hidden[:, 2 + t:]
    else:
        visual, audio = out.visual_hidden[:, 1:], out.audio_hidden[:, 1:]
    return torch.cat([_masked_mean(visual, out.valid), _masked_mean(audio, out.valid)], dim=-1)


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

    def __init__(self, model: AVBert, num_classes: int, feature: str, protocol: str, multilabel: bool,
                 loss: str = "cross_entropy", margin: float = 0.1):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(map(repr, LOSSES))}")
        if multilabel and loss != "cross_entropy":
            raise ValueError(f"loss {loss!r} is for single-label sets; multi-label sets train per-class sigmoids")
        self.model = model
        self.feature, self.protocol, self.multilabel = feature, protocol, multilabel
        self.loss, self.margin = loss, margin
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
        elif self.loss == "multi_margin":
            loss = F.multi_margin_loss(logits, labels.long(), margin=self.margin)
            acc = (logits.argmax(-1) == labels).float().mean()
        else:
            loss = F.cross_entropy(logits, labels.long())
            acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc}

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """Class probabilities [B, C]: sigmoid (multi-label) or softmax."""
        logits = self.logits(batch).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
