"""Scoring a downstream evaluation: view aggregation, top-k accuracy and mAP.

Test time scores every video several times (``test_views`` temporal views x
``test_crops`` spatial crops, 10 x 3 in the paper). ``aggregate_views``
averages the per-view class probabilities of each video (softmax for
single-label sets, sigmoid for multi-label ones) into one score vector per
video; the metrics are then computed over videos.

All metrics are percentages (0-100), like the paper's tables.

mAP convention (Charades): the average precision of a class is the mean, over
its positive videos, of the precision at that video's score; videos with the
same score are ranked together (the step-wise interpolation of
``sklearn.metrics.average_precision_score``). A class with no positive video in
the evaluated set has no defined AP and is left out of the mean, as in the
Charades evaluation of PySlowFast (and the released AVBERT code). When no class
has a positive, mAP is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class VideoScores:
    """One score vector per video: ``ids`` [N] sorted ascending, ``scores`` [N, C]
    averaged over the ``views`` [N] views each video had."""

    ids: torch.Tensor
    scores: torch.Tensor
    views: torch.Tensor


def aggregate_views(scores: torch.Tensor, video_ids: torch.Tensor) -> VideoScores:
    """Average the rows of ``scores`` [M, C] that belong to the same video.

    ``video_ids`` [M] names the video of each row (any order, any number of
    views per video). Returns videos in ascending id order.
    """
    if scores.ndim != 2 or video_ids.shape != scores.shape[:1]:
        raise ValueError(f"expected scores [M, C] and ids [M], got {tuple(scores.shape)} and {tuple(video_ids.shape)}")
    ids, inverse = torch.unique(video_ids, sorted=True, return_inverse=True)
    sums = torch.zeros(len(ids), scores.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, scores.double())
    counts = torch.bincount(inverse, minlength=len(ids))
    return VideoScores(ids, sums / counts[:, None], counts)


def first_labels(labels: torch.Tensor, video_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The label row of each video in ``ids``, from per-view ``labels`` [M] or [M, C].

    Every view of a video carries the same label; a disagreement is an error
    in the data pipeline and is refused.
    """
    order = torch.argsort(video_ids, stable=True)
    sorted_ids, sorted_labels = video_ids[order], labels[order]
    first = torch.searchsorted(sorted_ids, ids)
    chosen = sorted_labels[first]
    position = torch.searchsorted(ids, sorted_ids)
    if not torch.equal(sorted_labels, chosen[position]):
        raise ValueError("views of the same video carry different labels")
    return chosen


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` in percent for single-label ``labels`` [N].

    A video counts as correct at k when its label is among the k highest
    scores; k larger than the number of classes is clipped to it.
    """
    if len(labels) == 0:
        return {f"top{k}": math.nan for k in ks}
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        hits = (top == labels[:, None]).any(dim=1).double()
        out[f"top{k}"] = 100.0 * float(hits.mean())
    return out


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """AP of one class: ``scores`` [N], ``positives`` [N] bool; NaN without positives.

    Tied scores form one threshold, so the result does not depend on the
    order of equal scores.
    """
    positives = positives.bool()
    n_pos = int(positives.sum())
    if n_pos == 0:
        return math.nan
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, p = scores.double()[order], positives[order].double()
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    tp = torch.cumsum(p, 0)[last_of_tie]
    seen = torch.arange(1, len(s) + 1, dtype=torch.float64)[last_of_tie]
    precision = tp / seen
    new_tp = torch.diff(tp, prepend=tp.new_zeros(1))
    return float((new_tp * precision).sum() / n_pos)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``{"map": .., "classes": ..}``: mAP in percent over the classes that have
    at least one positive in ``targets`` [N, C] (multi-hot), and how many there were."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    defined = [ap for ap in aps if not math.isnan(ap)]
    value = 100.0 * sum(defined) / len(defined) if defined else math.nan
    return {"map": value, "classes": len(defined)}


def classification_metrics(video: VideoScores, labels: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """The paper's metrics of one evaluated set: mAP (multi-label) or top-1/top-5."""
    if multilabel:
        return mean_average_precision(video.scores, labels)
    return topk_accuracy(video.scores, labels.long())
