"""Clip encoders: a 3D ResNet for frames and a 2D ResNet for log-mel patches.

One residual network definition serves both: ``dims=3`` builds the visual
CNN (a "slow"-pathway style 3D ResNet: the stem and all strides are spatial
only, and the first convolution of every residual block has temporal extent
``temporal_kernel``, so the clip's frame count is kept to the end), ``dims=2``
builds the audio CNN over (mel, time). Depth 18 uses basic blocks, depth 50
bottleneck blocks, with ``width`` channels after the stem.

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


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, dims: int, cin: int, width: int, stride: int, temporal: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(dims, cin, width, _kernel(dims, 3, temporal), _stride(dims, stride))
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

    def __init__(self, dims: int, cin: int, width: int, stride: int, temporal: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(dims, cin, width, _kernel(dims, 1, temporal), _stride(dims, 1))
        self.bn1 = _norm(dims, width)
        self.conv2 = _conv(dims, width, width, _kernel(dims, 3, 1), _stride(dims, stride))
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


class ResNet(nn.Module):
    """Residual network over 2D (audio) or 3D (video) inputs, globally pooled.

    Input [N, C, (F,) H, W]; output [N, out_dim] with
    ``out_dim = 8 * width * expansion``.
    """

    def __init__(self, dims: int, depth: int, width: int, in_channels: int, temporal_kernel: int = 1):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        block = Bottleneck if depth == 50 else BasicBlock
        self.dims = dims
        self.stem = nn.Sequential(
            _conv(dims, in_channels, width, _kernel(dims, 7, 1), _stride(dims, 2)),
            _norm(dims, width),
            nn.ReLU(inplace=True),
            (nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)) if dims == 3 else nn.MaxPool2d(3, 2, 1)),
        )
        stages, cin = [], width
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            stage_width = width * 2**i
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(dims, cin, stage_width, stride, temporal_kernel))
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


def visual_encoder(depth: int, width: int, temporal_kernel: int, token_width: int) -> ClipEncoder:
    return ClipEncoder(ResNet(3, depth, width, in_channels=3, temporal_kernel=temporal_kernel), token_width)


def audio_encoder(depth: int, width: int, token_width: int) -> ClipEncoder:
    return ClipEncoder(ResNet(2, depth, width, in_channels=1), token_width)
