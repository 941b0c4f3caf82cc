"""Clip encoders: a 3D ResNet for frames and a 2D ResNet for log-mel patches.

One residual network definition serves both: ``dims=3`` builds the visual CNN (the
Slow pathway of a SlowFast ResNet, :func:`visual_resnet`), ``dims=2`` the audio CNN over
(mel, time) (:func:`audio_resnet`). Depth 18 uses basic blocks, depth 50 bottleneck
blocks, with ``width`` channels after the stem; stage ``i`` (res2..res5) has inner width
``width * 2**i`` and output width ``width * 2**i * expansion``. The structural choices,
stem, stage strides, which stages have temporal kernels (video) or separable 3x1 + 1x3
convolutions (audio), come from ``VisualCNNConfig`` / ``AudioCNNConfig``; their
docstrings say which setting of the released code (sangho-vision/avbert) each paper
value comes from.

Block layout (as in the released ``code/models/resnet_helper.py`` and
``audio_resnet_helper.py``): a bottleneck is ``Tx1x1 -> 1x3x3 (strided) -> 1x1x1`` with
the temporal kernel ``T`` on its first convolution and the stride on the 3x3; a basic
block is ``Tx3x3 (strided) -> 1x3x3``. The shortcut is a strided 1x1 convolution and
BatchNorm where the width or resolution changes, the identity elsewhere, and the last
BatchNorm of every block starts at zero, so each block starts as the identity.
Convolutions keep PyTorch's default initialisation; the released fine-tuning code
re-initialises them (MSRA fill, ``code/utils/weight_init_helper.py``) before loading its
pretrained weights over them.

Video reaches the model as uint8 pixels, the loaders' output, and is normalised
here, on the training device: ``(x / 255 - 0.45) / 0.225`` (the Kinetics
statistics PySlowFast uses). Host memory, worker-to-trainer transfers and the
host-to-GPU copy then move a quarter of the bytes of float32 frames. A float
input is taken as already normalised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from avbert.config import AudioCNNConfig, VisualCNNConfig
from avbert.config.schema import RES_STAGE_NAMES

STAGE_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
PIXEL_MEAN, PIXEL_STD = 0.45, 0.225


def normalize_pixels(pixels: torch.Tensor,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 pixels -> float32 ``(x / 255 - 0.45) / 0.225`` in ``memory_format``; float
    input passes unchanged (only laid out in ``memory_format`` when that is not the
    default). The CPU loaders hand over clips laid out channels-last (a permuted view,
    ``avbert.data.pixels.stack_clips``): the float conversion, a full pass anyway, puts
    them in the layout the CNN runs in, on the training device."""
    if pixels.is_floating_point():
        return pixels if memory_format == torch.contiguous_format else pixels.contiguous(memory_format=memory_format)
    # In place on the one float copy: no further full-size temporaries at the peak.
    return pixels.to(torch.float32, memory_format=memory_format).div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)


def _conv(dims: int, cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> nn.Module:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    padding = tuple(k // 2 for k in kernel)
    return conv(cin, cout, kernel, stride=stride, padding=padding, bias=False)


def _norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)


def _kernel(dims: int, spatial: int, temporal: int) -> tuple[int, ...]:
    return (temporal, spatial, spatial) if dims == 3 else (spatial, spatial)


def _stride(dims: int, spatial: int) -> tuple[int, ...]:
    return (1, spatial, spatial) if dims == 3 else (spatial, spatial)


def _spatial_conv(dims: int, cin: int, cout: int, temporal: int, stride: int, separable: bool) -> nn.Module:
    """The 3x3 convolution of a block (``temporal``x3x3 for video). ``separable``
    (audio only) splits it into a 3x1 (frequency) and a 1x3 (time) convolution with
    BatchNorm and ReLU between them, each carrying the stride along its own axis."""
    if not separable:
        return _conv(dims, cin, cout, _kernel(dims, 3, temporal), _stride(dims, stride))
    if dims != 2:
        raise ValueError("separable 3x1 + 1x3 convolutions are defined for the 2D (audio) ResNet only")
    return nn.Sequential(
        _conv(2, cin, cout, (3, 1), (stride, 1)), _norm(2, cout), nn.ReLU(inplace=True),
        _conv(2, cout, cout, (1, 3), (1, stride)),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, dims: int, cin: int, width: int, stride: int, temporal: int, separable: bool = False):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _spatial_conv(dims, cin, width, temporal, stride, separable)
        self.bn1 = _norm(dims, width)
        self.conv2 = _conv(dims, width, cout, _kernel(dims, 3, 1), _stride(dims, 1))
        self.bn2 = _norm(dims, cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity
        self.shortcut = _shortcut(dims, cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, dims: int, cin: int, width: int, stride: int, temporal: int, separable: bool = False):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(dims, cin, width, _kernel(dims, 1, temporal), _stride(dims, 1))
        self.bn1 = _norm(dims, width)
        self.conv2 = _spatial_conv(dims, width, width, 1, stride, separable)
        self.bn2 = _norm(dims, width)
        self.conv3 = _conv(dims, width, cout, _kernel(dims, 1, 1), _stride(dims, 1))
        self.bn3 = _norm(dims, cout)
        nn.init.zeros_(self.bn3.weight)
        self.shortcut = _shortcut(dims, cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(dims: int, cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(_conv(dims, cin, cout, _kernel(dims, 1, 1), _stride(dims, stride)), _norm(dims, cout))


def video_stem(in_channels: int, width: int, temporal_kernel: int, temporal_stride: int) -> nn.Sequential:
    """``temporal_kernel``x7x7 convolution with stride ``(temporal_stride, 2, 2)``,
    BatchNorm, ReLU, then a 1x3x3 max-pool with stride (1, 2, 2)."""
    return nn.Sequential(
        _conv(3, in_channels, width, (temporal_kernel, 7, 7), (temporal_stride, 2, 2)),
        _norm(3, width),
        nn.ReLU(inplace=True),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    )


def audio_stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    """``resnet``: 7x7 convolution with stride 2, BatchNorm, ReLU, 3x3 max-pool with
    stride 2 (spatial resolution / 4). ``separable``: a 9x1 (frequency) and a 1x9 (time)
    convolution, stride 1, each followed by BatchNorm and ReLU, no pooling (resolution
    kept)."""
    if kind == "resnet":
        return nn.Sequential(
            _conv(2, in_channels, width, (7, 7), (2, 2)), _norm(2, width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    if kind == "separable":
        return nn.Sequential(
            _conv(2, in_channels, width, (9, 1), (1, 1)), _norm(2, width), nn.ReLU(inplace=True),
            _conv(2, width, width, (1, 9), (1, 1)), _norm(2, width), nn.ReLU(inplace=True),
        )
    raise ValueError(f"unknown audio stem {kind!r}; allowed values: 'resnet', 'separable'")


class ResNet(nn.Module):
    """Residual network over 2D (audio) or 3D (video) inputs, globally pooled.

    ``stem`` maps the input to ``width`` channels; then four stages (res2..res5) of
    ``STAGE_BLOCKS[depth]`` blocks, the first block of stage ``i`` strided (spatially)
    by ``strides[i]``, every block of stage ``i`` with temporal kernel
    ``temporal_kernels[i]`` (3D) and, where ``separable[i]``, its 3x3 convolution split
    into 3x1 + 1x3 (2D). Input [N, C, (F,) H, W]; output [N, out_dim] with
    ``out_dim = 8 * width * expansion``.
    """

    def __init__(self, dims: int, depth: int, width: int, stem: nn.Module,
                 strides: tuple[int, ...] = (1, 2, 2, 2), temporal_kernels: tuple[int, ...] = (1, 1, 1, 1),
                 separable: tuple[bool, ...] = (False, False, False, False)):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        stages_n = len(STAGE_BLOCKS[depth])
        for name, values in (("strides", strides), ("temporal_kernels", temporal_kernels), ("separable", separable)):
            if len(values) != stages_n:
                raise ValueError(f"{name} needs one entry per stage ({stages_n}), got {tuple(values)}")
        block = Bottleneck if depth == 50 else BasicBlock
        self.dims = dims
        self.stem = stem
        stages, cin = [], width
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            stage_width = width * 2**i
            layers = []
            for j in range(blocks):
                stride = strides[i] if j == 0 else 1
                layers.append(block(dims, cin, stage_width, stride, temporal_kernels[i], bool(separable[i])))
                cin = stage_width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_dim = cin
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x.flatten(2).mean(-1)


def visual_resnet(cfg: VisualCNNConfig, in_channels: int = 3) -> ResNet:
    """The visual 3D ResNet of ``cfg``: video stem, then the stages, with temporal
    kernel ``cfg.temporal_kernel`` in every block of ``cfg.temporal_stages``."""
    temporal = tuple(cfg.temporal_kernel if stage in cfg.temporal_stages else 1 for stage in RES_STAGE_NAMES)
    stem = video_stem(in_channels, cfg.width, cfg.stem_temporal_kernel, cfg.stem_temporal_stride)
    return ResNet(3, cfg.depth, cfg.width, stem, strides=tuple(cfg.strides), temporal_kernels=temporal)


def audio_resnet(cfg: AudioCNNConfig, in_channels: int = 1) -> ResNet:
    """The audio 2D ResNet of ``cfg`` over ``[N, 1, n_mels, frames]``."""
    separable = tuple(stage in cfg.separable_stages for stage in RES_STAGE_NAMES)
    stem = audio_stem(cfg.stem, in_channels, cfg.width)
    return ResNet(2, cfg.depth, cfg.width, stem, strides=tuple(cfg.strides), separable=separable)


class ClipEncoder(nn.Module):
    """A CNN per clip, then a linear map to the Transformer width and LayerNorm:
    one token per clip. Input [B, T, C, ...] -> tokens [B, T, D]; uint8 input
    (video pixels) is normalised first."""

    def __init__(self, cnn: ResNet, width: int):
        super().__init__()
        self.cnn = cnn
        self.proj = nn.Linear(cnn.out_dim, width)
        self.norm = nn.LayerNorm(width)
        self.memory_format = torch.contiguous_format

    def set_channels_last(self, enabled: bool = True) -> None:
        """Run the CNN channels-last (``channels_last_3d`` for video): its input is laid
        out so in the float conversion, and cuDNN and oneDNN then pick channels-last
        kernels and keep the activations channels-last. The weights stay in the standard
        layout, which DeepSpeed needs (it broadcasts and flattens them as plain
        contiguous tensors); the convolutions re-lay the small weights per call."""
        dims = next(m for m in self.cnn.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))).weight.dim()
        channels_last = torch.channels_last_3d if dims == 5 else torch.channels_last
        self.memory_format = channels_last if enabled else torch.contiguous_format

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        features = self.cnn(normalize_pixels(clips.flatten(0, 1), self.memory_format))
        return self.norm(self.proj(features)).view(b, t, -1)


def visual_encoder(cfg: VisualCNNConfig, token_width: int) -> ClipEncoder:
    return ClipEncoder(visual_resnet(cfg), token_width)


def audio_encoder(cfg: AudioCNNConfig, token_width: int) -> ClipEncoder:
    return ClipEncoder(audio_resnet(cfg), token_width)
