"""Classification heads on AVBERT features, and the test-time view layout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from avbert.config import DataConfig, ModelConfig
from avbert.models import AVBert
from avbert.models.heads import DownstreamClassifier, extract_feature, feature_dim
from avbert.train.downstream import SyntheticTestViews, flatten_views


def tiny_batch(batch: int = 3, clips: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"video": torch.randn(batch, clips, 3, 4, 32, 32, generator=generator),
            "audio": torch.randn(batch, clips, 1, 40, 32, generator=generator),
            "valid": torch.ones(batch, clips, dtype=torch.bool),
            "label": torch.tensor([0, 2, 1])[:batch]}


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
@pytest.mark.parametrize("feature", ["visual", "audio", "multimodal", "multimodal_context"])
def test_feature_has_the_announced_width(fusion, feature):
    torch.manual_seed(0)
    model = AVBert(replace(ModelConfig.tiny(), fusion=fusion)).eval()
    out = extract_feature(model, tiny_batch(), feature)
    assert out.shape == (3, feature_dim(model, feature))


def test_unimodal_feature_reads_only_its_modality():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    visual = extract_feature(model, batch, "visual")
    noisy_audio = dict(batch, audio=torch.randn_like(batch["audio"]))
    torch.testing.assert_close(extract_feature(model, noisy_audio, "visual"), visual)
    no_video = {k: v for k, v in batch.items() if k != "video"}  # audio-only sets (ESC-50) have no frames
    assert extract_feature(model, no_video, "audio").shape == (3, feature_dim(model, "audio"))


def test_finetune_trains_model_and_head():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "multimodal", "finetune", multilabel=False)
    out = classifier(tiny_batch())
    assert set(out) == {"loss", "acc"} and out["loss"].ndim == 0
    out["loss"].backward()
    assert classifier.model.visual_cnn.proj.weight.grad is not None
    assert classifier.head[-1].weight.grad is not None


def test_linear_evaluation_freezes_the_model_in_eval_mode():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "multimodal", "linear", multilabel=False)
    assert not classifier.model.training and classifier.head.training  # as built
    classifier.eval().train()
    assert not classifier.model.training and classifier.head.training
    assert not any(p.requires_grad for p in classifier.model.parameters())
    classifier(tiny_batch())["loss"].backward()
    assert all(p.grad is None for p in classifier.model.parameters())
    assert classifier.head[-1].weight.grad is not None


def test_multilabel_uses_per_class_sigmoids():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 4, "multimodal", "finetune", multilabel=True)
    batch = dict(tiny_batch(), label=torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]))
    assert torch.isfinite(classifier(batch)["loss"])
    probabilities = classifier.eval().predict(batch)
    assert probabilities.shape == (3, 4) and not torch.allclose(probabilities.sum(-1), torch.ones(3))


def test_flatten_views_repeats_index_and_label_per_view():
    batch = tiny_batch(2)
    stacked = {"video": torch.stack([batch["video"]] * 6, 1), "audio": torch.stack([batch["audio"]] * 6, 1),
               "valid": torch.ones(2, 6, 4, dtype=torch.bool), "label": torch.tensor([3, 1]),
               "index": torch.tensor([10, 11])}
    flat, ids, labels = flatten_views(stacked)
    assert flat["video"].shape == (12, 4, 3, 4, 32, 32) and flat["valid"].shape == (12, 4)
    assert ids.tolist() == [10] * 6 + [11] * 6 and labels.tolist() == [3] * 6 + [1] * 6


def test_synthetic_test_views_layout():
    data = replace(DataConfig.from_preset("tiny"), synthetic=replace(DataConfig().synthetic, num_videos=10))
    views = SyntheticTestViews(data, views=2, crops=3)
    item = views[0]
    assert item["video"].shape == (6, 4, 3, 4, 32, 32) and item["audio"].shape == (6, 4, 1, 40, 32)
    assert item["valid"].shape == (6, 4) and item["label"].ndim == 0
    full = views.videos[0]["video"]  # clips + views - 1 clips
    torch.testing.assert_close(item["video"][1], full[0:4])  # view 0, centre crop: the frames as they are
    torch.testing.assert_close(item["video"][4], full[1:5])  # view 1 starts one clip later
    assert not torch.equal(item["video"][0], item["video"][1])  # left crop is shifted


def test_context_feature_is_the_summary_beside_the_mean_of_valid_clip_outputs():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    batch["valid"][0, 2:] = False  # the first video has two clips
    with torch.no_grad():
        out = model(batch["video"], batch["audio"], batch["valid"])
        feature = extract_feature(model, batch, "multimodal_context")
    t, width = batch["valid"].shape[1], model.width
    torch.testing.assert_close(feature[:, :2 * width], out.summary())
    first = torch.cat([out.multimodal_hidden[0, 1:3], out.multimodal_hidden[0, 2 + t:4 + t]]).mean(0)
    torch.testing.assert_close(feature[0, 2 * width:], first)
