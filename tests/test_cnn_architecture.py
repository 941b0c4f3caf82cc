"""The clip CNNs: the paper preset is the released architecture, the tiny preset is the
model the learning tests were measured on.

The expected tables below are read off the released fine-tuning code
(github.com/sangho-vision/avbert): the visual CNN from ``code/models/video_model_builder.py``
(``_TEMPORAL_KERNEL_BASIS``, ``_POOL1``, the ``VideoModelStem`` kernel, stride and padding),
``code/models/stem_helper.py`` (the stem's max-pool) and ``code/models/resnet_helper.py``
(``BottleneckTransform``: Tx1x1, then 1x3x3 carrying the stride, then 1x1x1; the
``branch1`` shortcut a strided 1x1x1), with the RESNET section of
``code/configs/kinetics-sounds/config.yaml`` (DEPTH 50, WIDTH_PER_GROUP 64,
SPATIAL_STRIDES [[1], [2], [2], [2]], NUM_BLOCK_TEMP_KERNEL [[3], [4], [6], [3]]); the
audio CNN from ``code/models/audio_model_builder.py`` (``AudioModelStem`` kernel [9, 9],
stride [1, 1], padding [4, 4], separable; ``separable=True`` for s2 and s3 only),
``code/models/audio_stem_helper.py``, ``code/models/audio_resnet_helper.py`` (the
separable 3x1 + 1x3 split of the bottleneck's 3x3) and the AUDIO_RESNET section of the
same config (DEPTH 50, WIDTH_PER_GROUP 32, STRIDES [2, 2, 2, 2]). The parameter counts
are those of the released ``ResNet`` and ``AudioResNet`` without their heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from avbert.config import ConfigError, ModelConfig, load_config
from avbert.models import AVBert, count_cnn_parameters
from avbert.models.cnn import audio_resnet, visual_resnet

GOLDEN_TINY = Path(__file__).resolve().parent / "golden" / "tiny_cnn_state_shapes.json"

# -- the released architecture -------------------------------------------------------------
# Visual stem: 5x7x7 convolution, stride (2, 2, 2), padding (2, 3, 3), 3 -> 64 channels,
# BatchNorm, ReLU, 1x3x3 max-pool with stride (1, 2, 2), padding (0, 1, 1).
VISUAL_STEM = [
    ("conv", (5, 7, 7), (2, 2, 2), (2, 3, 3), 3, 64),
    ("bn", 64),
    ("relu",),
    ("maxpool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
]
# (stage, blocks, spatial stride of its first block, temporal kernel of every block,
#  inner width, output width, output [C, T, H, W] for a 32 x 112 x 112 clip)
VISUAL_STAGES = [
    ("res2", 3, 1, 1, 64, 256, (256, 16, 28, 28)),
    ("res3", 4, 2, 1, 128, 512, (512, 16, 14, 14)),
    ("res4", 6, 2, 3, 256, 1024, (1024, 16, 7, 7)),
    ("res5", 3, 2, 3, 512, 2048, (2048, 16, 4, 4)),
]
VISUAL_PARAMS = 31_672_128

# Audio stem: 9x1 convolution (frequency), stride 1, padding (4, 0), 1 -> 32 channels,
# BatchNorm, ReLU, 1x9 convolution (time), padding (0, 4), BatchNorm, ReLU; no pooling.
AUDIO_STEM = [
    ("conv", (9, 1), (1, 1), (4, 0), 1, 32),
    ("bn", 32),
    ("relu",),
    ("conv", (1, 9), (1, 1), (0, 4), 32, 32),
    ("bn", 32),
    ("relu",),
]
# (stage, blocks, stride of its first block on both axes, 3x3 split into 3x1 + 1x3,
#  inner width, output width, output [C, F, T] for an 80 x 128 log-mel patch)
AUDIO_STAGES = [
    ("res2", 3, 2, True, 32, 128, (128, 40, 64)),
    ("res3", 4, 2, True, 64, 256, (256, 20, 32)),
    ("res4", 6, 2, False, 128, 512, (512, 10, 16)),
    ("res5", 3, 2, False, 256, 1024, (1024, 5, 8)),
]
AUDIO_PARAMS = 5_839_840
PAPER_PROJECTIONS = (2048 * 768 + 768) + (1024 * 768 + 768) + 2 * (2 * 768)  # linear + LayerNorm per CNN

# The tiny preset, as the learning tests measured it (golden file: every CNN state tensor).
TINY_VISUAL_STEM = [("conv", (1, 7, 7), (1, 2, 2), (0, 3, 3), 3, 8), ("bn", 8), ("relu",),
                    ("maxpool", (1, 3, 3), (1, 2, 2), (0, 1, 1))]
TINY_AUDIO_STEM = [("conv", (7, 7), (2, 2), (3, 3), 1, 8), ("bn", 8), ("relu",), ("maxpool", 3, 2, 1)]
TINY_PARAMS = {"visual": 324_168, "audio": 175_928, "projections": 8_576}


def bottleneck_3d(temporal: int, stride: int) -> list[tuple]:
    """Released ``BottleneckTransform``: (kernel, stride) of its three convolutions."""
    return [((temporal, 1, 1), (1, 1, 1)), ((1, 3, 3), (1, stride, stride)), ((1, 1, 1), (1, 1, 1))]


def bottleneck_2d(stride: int, separable: bool) -> list[tuple]:
    """Released audio ``BottleneckTransform``: 1x1, 3x3 or 3x1 + 1x3 (each carrying the
    stride along its own axis), 1x1."""
    middle = [((3, 1), (stride, 1)), ((1, 3), (1, stride))] if separable else [((3, 3), (stride, stride))]
    return [((1, 1), (1, 1)), *middle, ((1, 1), (1, 1))]


def basic_3d(temporal: int, stride: int) -> list[tuple]:
    return [((temporal, 3, 3), (1, stride, stride)), ((1, 3, 3), (1, 1, 1))]


def basic_2d(stride: int) -> list[tuple]:
    return [((3, 3), (stride, stride)), ((3, 3), (1, 1))]


# -- what the built modules are ------------------------------------------------------------
def _t(value) -> tuple | int:
    return tuple(value) if isinstance(value, (tuple, list)) else value


def stem_rows(stem: nn.Module) -> list[tuple]:
    rows = []
    for layer in stem:
        if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
            rows.append(("conv", _t(layer.kernel_size), _t(layer.stride), _t(layer.padding),
                         layer.in_channels, layer.out_channels))
        elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm3d)):
            rows.append(("bn", layer.num_features))
        elif isinstance(layer, nn.ReLU):
            rows.append(("relu",))
        elif isinstance(layer, (nn.MaxPool2d, nn.MaxPool3d)):
            rows.append(("maxpool", _t(layer.kernel_size), _t(layer.stride), _t(layer.padding)))
        else:
            rows.append((type(layer).__name__,))
    return rows


def block_convs(block: nn.Module) -> tuple[list[tuple], list[tuple], list[int]]:
    """(kernel, stride) of the residual branch's convolutions in order, of the
    shortcut's, and the branch's output channels."""
    branch, shortcut, widths = [], [], []
    for name, module in block.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            row = (_t(module.kernel_size), _t(module.stride))
            if name.startswith("shortcut"):
                shortcut.append(row)
            else:
                branch.append(row)
                widths.append(module.out_channels)
            assert module.padding == tuple(k // 2 for k in module.kernel_size), name  # "same" padding
    return branch, shortcut, widths


def stage_outputs(net: nn.Module, clip: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-stage output shapes for one input of shape ``clip`` (run on the meta device)."""
    shapes = []
    hooks = [stage.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape[1:])))
             for stage in net.stages]
    net.to("meta")(torch.empty(1, *clip, device="meta"))
    for hook in hooks:
        hook.remove()
    return shapes


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def paper() -> ModelConfig:
    return ModelConfig.from_preset("paper")


# -- the paper preset is the released visual CNN --------------------------------------------
def test_paper_visual_cnn_matches_the_released_slow_pathway_r50(paper):
    net = visual_resnet(paper.visual)
    assert stem_rows(net.stem) == VISUAL_STEM
    assert [len(stage) for stage in net.stages] == [row[1] for row in VISUAL_STAGES]
    cin = 64
    for stage, (name, blocks, stride, temporal, inner, out, _) in zip(net.stages, VISUAL_STAGES):
        for j, block in enumerate(stage):
            branch, shortcut, widths = block_convs(block)
            s = stride if j == 0 else 1
            assert branch == bottleneck_3d(temporal, s), (name, j)
            assert widths == [inner, inner, out], (name, j)
            assert shortcut == ([((1, 1, 1), (1, s, s))] if (cin != out or s != 1) else []), (name, j)
            cin = out
    assert net.out_dim == 2048
    assert stage_outputs(net, (3, 32, 112, 112)) == [row[6] for row in VISUAL_STAGES]
    assert parameter_count(net) == VISUAL_PARAMS


def test_paper_visual_stem_halves_the_frames(paper):
    """32 frames (the released NUM_FRAMES) leave the stem as 16, which the released head's
    pool size ``NUM_FRAMES // 2`` assumes; every later stage keeps them."""
    net = visual_resnet(paper.visual).to("meta")
    out = net.stem(torch.empty(1, 3, 32, 112, 112, device="meta"))
    assert tuple(out.shape) == (1, 64, 16, 28, 28)


# -- the paper preset is the released audio CNN ---------------------------------------------
def test_paper_audio_cnn_matches_the_released_audio_resnet50(paper):
    net = audio_resnet(paper.audio)
    assert stem_rows(net.stem) == AUDIO_STEM
    assert [len(stage) for stage in net.stages] == [row[1] for row in AUDIO_STAGES]
    cin = 32
    for stage, (name, blocks, stride, separable, inner, out, _) in zip(net.stages, AUDIO_STAGES):
        for j, block in enumerate(stage):
            branch, shortcut, widths = block_convs(block)
            s = stride if j == 0 else 1
            assert branch == bottleneck_2d(s, separable), (name, j)
            assert widths == [inner] * (len(branch) - 1) + [out], (name, j)
            assert shortcut == ([((1, 1), (s, s))] if (cin != out or s != 1) else []), (name, j)
            cin = out
    assert net.out_dim == 1024
    assert stage_outputs(net, (1, 80, 128)) == [row[6] for row in AUDIO_STAGES]
    assert parameter_count(net) == AUDIO_PARAMS


def test_separable_convolutions_have_batchnorm_and_relu_between_them(paper):
    """Released ``BottleneckTransform(separable=True)``: b1 (3x1), BN, ReLU, b2 (1x3), BN, ReLU."""
    block = audio_resnet(paper.audio).stages[0][0]
    split = [type(m) for m in block.conv2]
    assert split == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert isinstance(block.bn2, nn.BatchNorm2d)  # the second BN; the ReLU follows in forward


def test_paper_cnn_parameter_counts_with_projections(paper):
    counts = count_cnn_parameters(AVBert(paper))
    assert counts == {"visual": VISUAL_PARAMS, "audio": AUDIO_PARAMS, "projections": PAPER_PROJECTIONS,
                      "cnns": VISUAL_PARAMS + AUDIO_PARAMS + PAPER_PROJECTIONS}


# -- the tiny preset is unchanged -----------------------------------------------------------
def test_tiny_cnns_keep_the_measured_state_dict():
    model = AVBert(ModelConfig.tiny())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith(("visual_cnn.", "audio_cnn."))}
    assert shapes == json.loads(GOLDEN_TINY.read_text())
    assert list(shapes) == list(json.loads(GOLDEN_TINY.read_text()))  # the same order (module creation order)
    counts = count_cnn_parameters(model)
    assert {k: counts[k] for k in TINY_PARAMS} == TINY_PARAMS


def test_tiny_structure():
    """Depth 18, width 8: a 7x7 spatial stem without temporal stride and a temporal
    kernel of 3 in every stage (its clips are 4 frames); the audio CNN keeps the image
    ResNet stem and strides (1, 2, 2, 2) on its 40 x 32 patches."""
    cfg = ModelConfig.tiny()
    visual, audio = visual_resnet(cfg.visual), audio_resnet(cfg.audio)
    assert stem_rows(visual.stem) == TINY_VISUAL_STEM and stem_rows(audio.stem) == TINY_AUDIO_STEM
    for i, stage in enumerate(visual.stages):
        for j, block in enumerate(stage):
            assert block_convs(block)[0] == basic_3d(3, 2 if (i > 0 and j == 0) else 1)
    for i, stage in enumerate(audio.stages):
        for j, block in enumerate(stage):
            assert block_convs(block)[0] == basic_2d(2 if (i > 0 and j == 0) else 1)
    assert stage_outputs(visual, (3, 4, 32, 32)) == [(8, 4, 8, 8), (16, 4, 4, 4), (32, 4, 2, 2), (64, 4, 1, 1)]
    assert stage_outputs(audio, (1, 40, 32)) == [(8, 10, 8), (16, 5, 4), (32, 3, 2), (64, 2, 1)]


# -- the structure is configuration -------------------------------------------------------
def test_structure_follows_the_config():
    cfg = load_config(overrides=["model.preset=tiny", "model.visual.temporal_stages=[4, 5]",
                                 "model.visual.stem_temporal_kernel=3", "model.visual.stem_temporal_stride=2",
                                 "model.audio.stem=separable", "model.audio.strides=[2, 2, 2, 2]",
                                 "model.audio.separable_stages=[2]"]).model
    visual, audio = visual_resnet(cfg.visual), audio_resnet(cfg.audio)
    assert stem_rows(visual.stem)[0] == ("conv", (3, 7, 7), (2, 2, 2), (1, 3, 3), 3, 8)
    assert [block_convs(stage[0])[0][0][0][0] for stage in visual.stages] == [1, 1, 3, 3]
    assert stem_rows(audio.stem)[0] == ("conv", (9, 1), (1, 1), (4, 0), 1, 8)
    assert [len(block_convs(stage[1])[0]) for stage in audio.stages] == [3, 2, 2, 2]  # res2 split 3x1 + 1x3
    assert stage_outputs(audio, (1, 80, 128))[-1] == (64, 5, 8)


@pytest.mark.parametrize("override,message", [
    ("model.visual.temporal_stages=[1]", "res2..res5"),
    ("model.audio.separable_stages=[6]", "res2..res5"),
    ("model.audio.stem=conv", "allowed values"),
    ("model.visual.strides=[1, 2, 2]", "expected 4 items"),
    ("model.visual.stem_temporal_stride=0", "must be >= 1"),
])
def test_invalid_structure_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
