"""Classification heads on AVBERT features, and the test-time view layout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from avbert.config import DataConfig, ModelConfig
from avbert.models import AVBert
from avbert.models.heads import FEATURES, DownstreamClassifier, extract_feature, feature_dim
from avbert.train.downstream import SyntheticTestViews, flatten_views


def tiny_batch(batch: int = 3, clips: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"video": torch.randn(batch, clips, 3, 4, 32, 32, generator=generator),
            "audio": torch.randn(batch, clips, 1, 40, 32, generator=generator),
            "valid": torch.ones(batch, clips, dtype=torch.bool),
            "label": torch.tensor([0, 2, 1])[:batch]}


def features_for(fusion: str) -> list[str]:
    return [f for f in FEATURES if not (fusion == "early" and f in ("v_bert", "a_bert"))]


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_feature_has_the_announced_width(fusion):
    torch.manual_seed(0)
    model = AVBert(replace(ModelConfig.tiny(), fusion=fusion)).eval()
    for feature in features_for(fusion):
        out = extract_feature(model, tiny_batch(), feature)
        assert out.shape == (3, feature_dim(model, feature)), feature


def modules_run(model: AVBert, batch: dict, feature: str) -> set[str]:
    """The CNNs and Transformers (by group) a feature's extraction calls."""
    called: set[str] = set()
    named = {"visual_cnn": model.visual_cnn.cnn, "audio_cnn": model.audio_cnn.cnn,
             **{f"{group}_transformer": module for group, module in model.transformers.items()}}
    handles = [module.register_forward_hook(lambda *_, name=name: called.add(name)) for name, module in named.items()]
    try:
        with torch.no_grad():
            extract_feature(model, batch, feature)
    finally:
        for handle in handles:
            handle.remove()
    return called


# What each feature runs in the mid-fusion model (the paper's main one).
MODULES_OF_FEATURE = {
    "v_cnn": {"visual_cnn"},
    "a_cnn": {"audio_cnn"},
    "m_cnn": {"visual_cnn", "audio_cnn"},
    "v_bert": {"visual_cnn", "visual_transformer"},
    "a_bert": {"audio_cnn", "audio_transformer"},
    "m_bert": {"visual_cnn", "audio_cnn", "visual_transformer", "audio_transformer", "multimodal_transformer"},
    "m_context": {"visual_cnn", "audio_cnn", "visual_transformer", "audio_transformer", "multimodal_transformer"},
}


@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_runs_exactly_the_modules_it_names(feature):
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    assert modules_run(model, tiny_batch(), feature) == MODULES_OF_FEATURE[feature]


def test_cnn_features_are_the_pooled_cnn_outputs_before_the_projection():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    batch["valid"][1, 3:] = False  # the second video has three clips
    with torch.no_grad():
        pooled = model.visual_cnn.cnn(batch["video"].flatten(0, 1)).view(3, 4, -1)
        feature = extract_feature(model, batch, "v_cnn")
    assert feature.shape[-1] == model.visual_cnn.cnn.out_dim
    torch.testing.assert_close(feature[0], pooled[0].mean(0))
    torch.testing.assert_close(feature[1], pooled[1, :3].mean(0))  # invalid clips left out
    both = extract_feature(model, batch, "m_cnn")
    torch.testing.assert_close(both, torch.cat([feature, extract_feature(model, batch, "a_cnn")], dim=-1))


def test_bert_features_are_the_bos_outputs():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(batch["video"], batch["audio"], batch["valid"])
        torch.testing.assert_close(extract_feature(model, batch, "v_bert"), out.visual_hidden[:, 0])
        torch.testing.assert_close(extract_feature(model, batch, "a_bert"), out.audio_hidden[:, 0])
        torch.testing.assert_close(extract_feature(model, batch, "m_bert"), out.summary())


def test_unimodal_feature_reads_only_its_modality():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    noisy_audio = dict(batch, audio=torch.randn_like(batch["audio"]))
    for feature in ("v_cnn", "v_bert"):
        torch.testing.assert_close(extract_feature(model, noisy_audio, feature), extract_feature(model, batch, feature))
    no_video = {k: v for k, v in batch.items() if k != "video"}  # audio-only sets (ESC-50) have no frames
    for feature in ("a_cnn", "a_bert"):
        assert extract_feature(model, no_video, feature).shape == (3, feature_dim(model, feature))


def test_early_fusion_has_no_unimodal_transformer_feature():
    model = AVBert(replace(ModelConfig.tiny(), fusion="early"))
    with pytest.raises(ValueError, match="early fusion"):
        extract_feature(model, tiny_batch(), "v_bert")


def test_multi_margin_loss_is_the_hinge_on_the_scores():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "a_cnn", "linear", multilabel=False,
                                      loss="multi_margin", margin=0.1)
    batch = tiny_batch()
    logits = classifier.logits(batch)
    expected = torch.nn.functional.multi_margin_loss(logits, batch["label"], margin=0.1)
    torch.testing.assert_close(classifier(batch)["loss"], expected)
    with pytest.raises(ValueError, match="single-label"):
        DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "m_bert", "finetune", multilabel=True, loss="multi_margin")


def test_finetune_trains_model_and_head():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "m_bert", "finetune", multilabel=False)
    out = classifier(tiny_batch())
    assert set(out) == {"loss", "acc"} and out["loss"].ndim == 0
    out["loss"].backward()
    assert classifier.model.visual_cnn.proj.weight.grad is not None
    assert classifier.head[-1].weight.grad is not None


def test_linear_evaluation_freezes_the_model_in_eval_mode():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 3, "m_bert", "linear", multilabel=False)
    assert not classifier.model.training and classifier.head.training  # as built
    classifier.eval().train()
    assert not classifier.model.training and classifier.head.training
    assert not any(p.requires_grad for p in classifier.model.parameters())
    classifier(tiny_batch())["loss"].backward()
    assert all(p.grad is None for p in classifier.model.parameters())
    assert classifier.head[-1].weight.grad is not None


def test_multilabel_uses_per_class_sigmoids():
    torch.manual_seed(0)
    classifier = DownstreamClassifier(AVBert(ModelConfig.tiny()), 4, "m_bert", "finetune", multilabel=True)
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


def test_context_feature_is_the_summary_beside_the_means_of_valid_visual_and_audio_clip_outputs():
    torch.manual_seed(0)
    model = AVBert(ModelConfig.tiny()).eval()
    batch = tiny_batch()
    batch["valid"][0, 2:] = False  # the first video has two clips
    with torch.no_grad():
        out = model(batch["video"], batch["audio"], batch["valid"])
        feature = extract_feature(model, batch, "m_context")
    t, width = batch["valid"].shape[1], model.width
    torch.testing.assert_close(feature[:, :2 * width], out.summary())
    assert feature.shape == (3, 4 * width) == (3, feature_dim(model, "m_context"))
    torch.testing.assert_close(feature[0, 2 * width:3 * width], out.multimodal_hidden[0, 1:3].mean(0))
    torch.testing.assert_close(feature[0, 3 * width:], out.multimodal_hidden[0, 2 + t:4 + t].mean(0))
    torch.testing.assert_close(feature[1, 3 * width:], out.multimodal_hidden[1, 2 + t:].mean(0))
