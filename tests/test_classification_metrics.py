"""Downstream metrics: view aggregation, top-k accuracy, mAP with its conventions."""

from __future__ import annotations

import math

import pytest
import torch

from avbert.results.summaries import mean_over_splits
from avbert.train.classification import (
    aggregate_views,
    average_precision,
    classification_metrics,
    first_labels,
    mean_average_precision,
    topk_accuracy,
)


def reference_ap(scores: list[float], positives: list[bool]) -> float:
    """AP by its definition, for distinct scores: the mean over positives of the
    precision among the videos scored at least as high as that positive."""
    ranked = sorted(zip(scores, positives), key=lambda pair: -pair[0])
    precisions, hits = [], 0
    for rank, (_, positive) in enumerate(ranked, start=1):
        if positive:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions) if precisions else math.nan


def test_average_precision_by_hand():
    # ranks 1..5 hold (pos, neg, pos, neg, pos): AP = (1/1 + 2/3 + 3/5) / 3
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = torch.tensor([True, False, True, False, True])
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_average_precision_matches_the_definition_on_random_scores():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.rand(40, generator=generator)
        positives = torch.rand(40, generator=generator) < 0.3
        expected = reference_ap(scores.tolist(), positives.tolist())
        assert average_precision(scores, positives) == pytest.approx(expected, abs=1e-12)


def test_tied_scores_form_one_threshold_whatever_their_order():
    # two videos tie at the top, one positive: precision at that threshold is 1/2
    scores = torch.tensor([0.9, 0.9, 0.1])
    assert average_precision(scores, torch.tensor([True, False, False])) == pytest.approx(0.5)
    assert average_precision(scores, torch.tensor([False, True, False])) == pytest.approx(0.5)


def test_class_without_positives_is_left_out_of_the_mean():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.4], [0.3, 0.7, 0.6]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # class 2 has no positive
    ap0 = reference_ap([0.9, 0.1, 0.3], [True, False, True])
    ap1 = reference_ap([0.2, 0.8, 0.7], [False, True, False])
    result = mean_average_precision(scores, targets)
    assert result["classes"] == 2
    assert result["map"] == pytest.approx(100 * (ap0 + ap1) / 2)
    assert math.isnan(average_precision(scores[:, 2], targets[:, 2]))


def test_map_without_any_positive_is_nan():
    result = mean_average_precision(torch.rand(4, 3), torch.zeros(4, 3))
    assert math.isnan(result["map"]) and result["classes"] == 0


def test_perfect_ranking_gives_100_map():
    targets = torch.eye(5)
    assert mean_average_precision(targets + 0.01 * torch.rand(5, 5), targets)["map"] == pytest.approx(100.0)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05, 0.0],
                           [0.3, 0.1, 0.2, 0.25, 0.1, 0.05],
                           [0.05, 0.1, 0.1, 0.1, 0.15, 0.5]])
    labels = torch.tensor([1, 4, 0])  # top-1 hit; in the top 5 (tie broken either way); last place
    result = topk_accuracy(scores, labels)
    assert result["top1"] == pytest.approx(100 / 3)
    assert result["top5"] == pytest.approx(200 / 3)


def test_topk_with_fewer_classes_than_k():
    result = topk_accuracy(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 0]))
    assert result == {"top1": 50.0, "top5": 100.0}


def test_ten_by_three_views_are_averaged_per_video():
    """30 views of each of 4 videos, shuffled: each video's score is the mean of its views,
    and a video that only one view got right on its own is right after averaging."""
    generator = torch.Generator().manual_seed(1)
    videos, views, classes = 4, 10 * 3, 5
    scores = torch.softmax(torch.randn(videos, views, classes, generator=generator), -1)
    labels = torch.tensor([0, 1, 2, 3])
    scores[:, :, :] *= 0.5
    scores[torch.arange(videos), :, labels] += 0.2  # every video's own class leads on average...
    scores[0, :29, 4] += 0.25  # ...except that video 0's views mostly favour class 4 a little
    scores[0, 29, 0] += 10.0  # and one very confident view of video 0 decides it
    ids = torch.arange(videos).repeat_interleave(views) + 100
    order = torch.randperm(videos * views, generator=generator)
    flat_scores, flat_ids = scores.reshape(-1, classes)[order], ids[order]
    video = aggregate_views(flat_scores, flat_ids)
    assert video.ids.tolist() == [100, 101, 102, 103]
    assert video.views.tolist() == [30, 30, 30, 30]
    torch.testing.assert_close(video.scores, scores.double().mean(1))
    per_view_label = labels.repeat_interleave(views)[order]
    video_labels = first_labels(per_view_label, flat_ids, video.ids)
    assert video_labels.tolist() == [0, 1, 2, 3]
    assert classification_metrics(video, video_labels, multilabel=False)["top1"] == 100.0
    view_top1 = (flat_scores.argmax(-1) == per_view_label).double().mean() * 100
    assert view_top1 < 100.0  # single views get video 0 wrong


def test_views_of_one_video_must_agree_on_the_label():
    with pytest.raises(ValueError, match="different labels"):
        first_labels(torch.tensor([1, 2]), torch.tensor([7, 7]), torch.tensor([7]))


def test_multi_hot_labels_per_view():
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    ids = torch.tensor([5, 6, 5])
    assert first_labels(labels, ids, torch.tensor([5, 6])).tolist() == [[1, 0, 1], [0, 1, 0]]


def test_mean_over_splits():
    per_split = {"1": {"top1": 80.0, "top5": 95.0}, "2": {"top1": 82.0, "top5": 96.0}, "3": {"top1": 84.0}}
    assert mean_over_splits(per_split) == {"top1": pytest.approx(82.0), "top5": pytest.approx(95.5)}
