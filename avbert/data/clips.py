"""Where the clips of a video lie, and how each is cropped: shared by every media loader.

A video becomes ``T`` consecutive clips. Clip ``t`` is a frame window of
``frames_per_clip`` frames taken every ``frame_stride`` frames, and its audio is the
time interval those frames cover: ``[start / fps, (start + frames_per_clip * stride) /
fps)`` seconds, turned into one log-mel patch by :func:`avbert.data.audio.clip_logmel`.

Clip starts are ``clip_seconds`` apart. A video too short for that keeps its clips
evenly spread over its length, but never closer than half a window (clips that would
overlap more carry little new content); the clips that still do not fit repeat the last
one and are marked invalid (``valid`` is False). A video shorter than one window has no
clip at all and is skipped by the loaders (reason ``too_short``).

Training draws the start of the clip sequence, the short side of the resized frames
(``short_side`` range), the crop position and a horizontal flip from a generator keyed
by ``(seed, epoch, index)``, so a sample's augmentation does not depend on which worker
or loader produced it. Testing takes ``test_views`` sequence starts evenly spread over
the video and ``test_crops`` crops along the long side of frames whose short side is
``crop_size``.

Audio-only records (no frame rate) use a 100 Hz tick grid in place of frames, with one
window being one log-mel patch (``mel_frames * hop_length`` samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AUDIO_TICK_RATE = 100.0
"""Ticks per second of the grid that stands in for frames on audio-only records."""


@dataclass(frozen=True)
class ClipSpec:
    """The clip geometry and augmentation of a loader (from ``DataConfig``)."""

    clips: int = 10
    clip_seconds: float = 3.0
    frames_per_clip: int = 32
    frame_stride: int = 2
    crop_size: int = 112
    short_side: tuple[int, int] = (128, 160)
    sample_rate: int = 16000
    n_mels: int = 80
    mel_frames: int = 128
    hop_length: int = 256
    n_fft: int = 512
    spec_augment: float = 0.05
    test_views: int = 10
    test_crops: int = 3

    @classmethod
    def from_config(cls, data) -> "ClipSpec":
        """Geometry of a ``DataConfig``: hop from ``hop_ms``, FFT size ``n_fft`` (twice the
        hop when unset)."""
        hop = max(1, int(round(data.hop_ms * data.sample_rate / 1000.0)))
        return cls(clips=data.clips, clip_seconds=data.clip_seconds,
                   frames_per_clip=data.frames_per_clip, frame_stride=data.frame_stride,
                   crop_size=data.crop_size, short_side=tuple(data.short_side),
                   sample_rate=data.sample_rate, n_mels=data.n_mels,
                   mel_frames=data.mel_frames, hop_length=hop, n_fft=data.n_fft or 2 * hop,
                   spec_augment=data.spec_augment, test_views=data.test_views,
                   test_crops=data.test_crops)

    @property
    def window_frames(self) -> int:
        """Frames from the first to the last frame of one clip, both included."""
        return (self.frames_per_clip - 1) * self.frame_stride + 1

    def views(self, train: bool) -> int:
        """Sequence views per video: one in training, ``test_views * test_crops`` in test."""
        return 1 if train else self.test_views * self.test_crops

    def logmel(self):
        """The suite's log-mel transform with this geometry."""
        from avbert.data.audio import LogMel

        return LogMel(self.sample_rate, self.n_fft, self.hop_length, self.n_mels)


@dataclass
class ClipPlan:
    """The clips of one sequence view of one video.

    ``frames``: ``[T, F]`` frame indices (ticks for audio-only records);
    ``starts``: ``[T]`` audio window starts in seconds; ``window_seconds``: the length of
    every audio window; ``valid``: ``[T]`` whether the clip lies in the video.
    """

    frames: np.ndarray
    starts: np.ndarray
    window_seconds: float
    valid: np.ndarray


@dataclass(frozen=True)
class CropPlan:
    """Resize frames to ``height x width``, take the square at ``(top, left)``, flip."""

    height: int
    width: int
    top: int
    left: int
    flip: bool


class TooShort(ValueError):
    """The record is shorter than one clip window."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation."""
    return np.random.default_rng([seed, epoch, index])


def _grid(spec: ClipSpec, record) -> tuple[float, int, int, float]:
    """``(rate, units, window_units, window_seconds)`` of a record's time grid."""
    if record.fps:
        window_seconds = spec.frames_per_clip * spec.frame_stride / record.fps
        return record.fps, int(record.num_frames), spec.window_frames, window_seconds
    window_seconds = spec.mel_frames * spec.hop_length / spec.sample_rate
    units = int(math.floor(record.duration * AUDIO_TICK_RATE + 1e-6))
    return AUDIO_TICK_RATE, units, int(math.ceil(window_seconds * AUDIO_TICK_RATE)), window_seconds


def clip_step(spec: ClipSpec, rate: float, room: int, window: int) -> float:
    """Distance in frames between clip starts, given ``room`` frames of slack."""
    nominal = max(1.0, round(spec.clip_seconds * rate))
    if spec.clips == 1 or (spec.clips - 1) * nominal <= room:
        return nominal
    return max(math.ceil(window / 2), room / (spec.clips - 1))


def sequence_layout(spec: ClipSpec, record) -> tuple[float, int, float, int]:
    """``(step, valid_clips, slack, window_units)``: slack is the room left for the
    sequence start. Raises ``TooShort`` when not even one window fits."""
    rate, units, window, _ = _grid(spec, record)
    room = units - window
    if room < 0:
        raise TooShort(f"{units} frames, one clip needs {window}")
    step = clip_step(spec, rate, room, window)
    valid = min(spec.clips, 1 + int(math.floor(room / step + 1e-9)))
    return step, valid, room - (valid - 1) * step, window


def plan_clips(spec: ClipSpec, record, first: int) -> ClipPlan:
    """The clips of the sequence starting at frame ``first``."""
    rate, _, _, window_seconds = _grid(spec, record)
    step, valid, _, _ = sequence_layout(spec, record)
    offsets = np.round(np.arange(spec.clips) * step).astype(np.int64)
    offsets[valid:] = offsets[valid - 1]
    starts = first + offsets
    frames = starts[:, None] + np.arange(spec.frames_per_clip)[None, :] * spec.frame_stride
    if not record.fps:  # audio-only: the window start is what matters
        frames = np.repeat(starts[:, None], spec.frames_per_clip, axis=1)
    return ClipPlan(frames=frames, starts=starts / rate, window_seconds=window_seconds,
                    valid=np.arange(spec.clips) < valid)


def train_plan(spec: ClipSpec, record, rng: np.random.Generator) -> ClipPlan:
    """One sequence at a random start."""
    slack = sequence_layout(spec, record)[2]
    return plan_clips(spec, record, int(rng.integers(0, int(math.floor(slack)) + 1)))


def eval_plans(spec: ClipSpec, record) -> list[ClipPlan]:
    """``test_views`` sequences with evenly spread starts (centred for one view)."""
    slack = int(math.floor(sequence_layout(spec, record)[2]))
    if spec.test_views == 1:
        return [plan_clips(spec, record, slack // 2)]
    firsts = np.round(np.linspace(0, slack, spec.test_views)).astype(int)
    return [plan_clips(spec, record, int(first)) for first in firsts]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame size after scaling the short side to ``short_side`` (aspect kept)."""
    if height <= width:
        return short_side, max(short_side, int(round(width * short_side / height)))
    return max(short_side, int(round(height * short_side / width))), short_side


def train_crop(spec: ClipSpec, height: int, width: int, rng: np.random.Generator) -> CropPlan:
    """Scale jitter over ``short_side``, a random ``crop_size`` square, a coin-flip mirror."""
    low, high = spec.short_side
    side = max(int(rng.integers(low, high + 1)), spec.crop_size)
    out_h, out_w = resized_size(height, width, side)
    top = int(rng.integers(0, out_h - spec.crop_size + 1))
    left = int(rng.integers(0, out_w - spec.crop_size + 1))
    return CropPlan(out_h, out_w, top, left, bool(rng.random() < 0.5))


def eval_crops(spec: ClipSpec, height: int, width: int) -> list[CropPlan]:
    """``test_crops`` squares along the long side of frames scaled to ``crop_size``."""
    out_h, out_w = resized_size(height, width, spec.crop_size)
    count = spec.test_crops
    fractions = [0.5] if count == 1 else np.linspace(0.0, 1.0, count).tolist()
    crops = []
    for fraction in fractions:
        top = int(round(fraction * (out_h - spec.crop_size))) if out_h > out_w else (out_h - spec.crop_size) // 2
        left = int(round(fraction * (out_w - spec.crop_size))) if out_w >= out_h else (out_w - spec.crop_size) // 2
        crops.append(CropPlan(out_h, out_w, top, left, False))
    return crops


@dataclass
class SamplePlan:
    """Everything a loader needs to produce one sample: one ``(clips, crop)`` pair per
    view (one view in training; temporal-major, crop-minor in test) and the seed of its
    SpecAugment masks (None: no masking)."""

    views: list[tuple[ClipPlan, CropPlan | None]]
    mask_seed: int | None


def plan_sample(spec: ClipSpec, record, train: bool, seed: int, epoch: int) -> SamplePlan:
    """The views, crops and masking seed of ``record`` (raises ``TooShort``)."""
    height, width = record.height or 0, record.width or 0
    if train:
        rng = sample_rng(seed, epoch, record.index)
        clips = train_plan(spec, record, rng)
        crop = train_crop(spec, height, width, rng) if record.fps else None
        mask_seed = int(rng.integers(0, 2**62)) if spec.spec_augment > 0 else None
        return SamplePlan([(clips, crop)], mask_seed)
    crops = eval_crops(spec, height, width) if record.fps else [None] * spec.test_crops
    return SamplePlan([(clips, crop) for clips in eval_plans(spec, record) for crop in crops], None)
