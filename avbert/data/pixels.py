"""The loaders' pixel work on the CPU: cut each clip's crop box out of the decoded
frames, resize it, mirror it and lay it out as the suite's uint8 ``[T, 3, F, S, S]``.

Both CPU loaders call these functions: the DALI loader without a GPU on its decoded RGB
frames, the PyAV loader on its decoded ``av.VideoFrame`` (``gather_box`` converts each
to RGB and copies its box out while the frame is in cache). The resize here is torch's
uint8 bilinear kernel with antialiasing (the filter widens with the downscale, as
FFmpeg's and PIL's bilinear do): on a 240p source it costs about a third of DALI's CPU
resize of the same box without antialiasing. Only the crop box is resized, never the
whole frame. PySlowFast resizes without antialiasing; at the 0.4-0.7 downscales from
240-360p sources to a 128-160 pixel short side that aliases fine texture, and torch's
uint8 kernel is faster with antialiasing than without.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from avbert.data.clips import ClipSpec, CropPlan


def _even(value: float) -> int:
    return 2 * round(value / 2)


def crop_box(crop: CropPlan, height: int, width: int, side: int) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)``: the source pixels (of a ``height x width`` frame) that the
    ``side`` square of ``crop`` covers once the frame is resized to ``crop.height x
    crop.width``, rounded to even pixels (within 1 source pixel of the plan), so that
    the box holds whole 2x2 chroma blocks of a 4:2:0 frame: the PyAV loader scales it
    straight from the decoded planes. Every loader resizes exactly this box."""
    scale_y, scale_x = height / crop.height, width / crop.width
    if height < 2 or width < 2:
        return 0, 0, height, width
    even_height, even_width = height - height % 2, width - width % 2
    y0 = min(max(_even(crop.top * scale_y), 0), even_height - 2)
    x0 = min(max(_even(crop.left * scale_x), 0), even_width - 2)
    y1 = min(max(_even((crop.top + side) * scale_y), y0 + 2), even_height)
    x1 = min(max(_even((crop.left + side) * scale_x), x0 + 2), even_width)
    return y0, x0, y1, x1


def gather_box(frames, crop: CropPlan, side: int, convert: Optional[Callable] = None) -> torch.Tensor:
    """Decoded uint8 frames (``[N, H, W, 3]``, or a list of ``[H, W, 3]`` of one size)
    -> the ``crop_box`` of every frame as one contiguous uint8 ``[N, h, w, 3]``: the
    only copy of source pixels. ``convert`` turns each item of the list into its ``[H,
    W, 3]`` pixels first (a decoded ``av.VideoFrame`` into RGB), one frame at a time, so
    that its box is copied while the converted frame is still in cache."""
    if convert is None and not isinstance(frames, list):
        frames = np.asarray(frames)
        y0, x0, y1, x1 = crop_box(crop, frames.shape[1], frames.shape[2], side)
        return torch.from_numpy(np.ascontiguousarray(frames[:, y0:y1, x0:x1]))
    convert = convert or np.asarray
    first = convert(frames[0])
    y0, x0, y1, x1 = crop_box(crop, first.shape[0], first.shape[1], side)
    boxes = np.empty((len(frames), y1 - y0, x1 - x0, 3), np.uint8)
    boxes[0] = first[y0:y1, x0:x1]
    for box, frame in zip(boxes[1:], frames[1:]):
        box[...] = convert(frame)[y0:y1, x0:x1]
    return torch.from_numpy(boxes)


def resize_box(region: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 ``[N, h, w, 3]`` -> uint8 ``[N, side, side, 3]``: bilinear, antialiased."""
    planar = region.permute(0, 3, 1, 2)  # NCHW view of channels-last memory, which the uint8 kernel wants
    out = F.interpolate(planar, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1)


CHUNK = 8
"""Frames cut and resized at a time: their boxes are still in cache when they are
resized (about 15% less time than cutting every frame first, on 240p and 360p)."""


def crop_clips(frames, crop: CropPlan, spec: ClipSpec, convert: Optional[Callable] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoded frames of one view (``T * F`` of them, as ``gather_box`` takes them)
    -> its crop, uint8 ``[T, 3, F, S, S]``, mirrored when ``crop.flip`` (after the
    resize, on the smaller pixels: a mirrored gather of 3-byte pixels costs ten times a
    plain one). ``CHUNK`` frames at a time, each chunk resized (and mirrored) straight
    into its place. The result is a permuted view of ``[T, F, S, S, 3]`` memory: of
    ``out`` when given (a contiguous uint8 ``[T * F, S, S, 3]``, such as one row of a
    batch: ``batch_squares``), which ``stack_clips`` batches as it is."""
    side = spec.crop_size
    squares = torch.empty(len(frames), side, side, 3, dtype=torch.uint8) if out is None else out
    if squares.shape != (len(frames), side, side, 3) or not squares.is_contiguous():
        raise ValueError(f"crop_clips: out must be a contiguous [{len(frames)}, {side}, {side}, 3] tensor, "
                         f"not {tuple(squares.shape)}")
    for begin in range(0, len(frames), CHUNK):
        part = frames[begin:begin + CHUNK]
        resized = resize_box(gather_box(part, crop, side, convert), side)
        squares[begin:begin + len(part)] = resized.flip(2) if crop.flip else resized
    return clip_layout(squares, spec)


def clip_layout(squares: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Resized crops uint8 ``[..., T * F, S, S, 3]`` -> ``[..., T, 3, F, S, S]`` (a
    permuted view of the same memory)."""
    size = spec.crop_size
    lead = squares.shape[:-4]
    return squares.reshape(*lead, spec.clips, spec.frames_per_clip, size, size, 3).movedim(-1, -4)


def batch_squares(rows: int, spec: ClipSpec, *views: int) -> torch.Tensor:
    """An uninitialised uint8 ``[rows, *views, T * F, S, S, 3]`` batch that ``crop_clips``
    fills one crop at a time (``out=batch[row, ...]``); ``clip_layout`` of it is the
    batch in the layout ``stack_clips`` gives, with no copy of the crops."""
    side = spec.crop_size
    return torch.empty(rows, *views, spec.clips * spec.frames_per_clip, side, side, 3, dtype=torch.uint8)


def stack_clips(clips: list[torch.Tensor]):
    """``torch.stack`` of crops ``[..., 3, F, S, S]`` laid out channels-last (as
    ``crop_clips`` makes them), keeping that layout: the copy is a plain one, where a
    stack in the logical order would interleave the channels apart (a transposing copy
    of single bytes, several times slower). The result is again a permuted view, of
    ``[N, ..., F, S, S, 3]`` memory; the model's ``normalize_pixels`` makes it
    contiguous in the float conversion it does anyway, on the training device."""
    inner = [clip.movedim(-4, -1) for clip in clips]  # views of the channels-last memory
    return torch.stack(inner).movedim(-1, -4)
