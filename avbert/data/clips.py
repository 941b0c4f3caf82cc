"""Where the clips of a video lie, and how each is cropped: shared by every media loader.

A video becomes ``T`` clips taken from its *window*: the ``window`` of its manifest
record (``[start, end]`` seconds from the first frame, e.g. the 30 s around a
Kinetics-700 annotation), clamped to the file, or the whole file when the record has
none. Clip ``t`` is a frame window of ``frames_per_clip`` frames taken every
``frame_stride`` frames, and its audio is the time interval those frames cover: ``[start /
fps, (start + frames_per_clip * stride) / fps)`` seconds, turned into one log-mel patch by
:func:`avbert.data.audio.clip_logmel`.

The clips divide the window evenly, without overlap: clip ``t`` starts at ``window_start +
offset + t * step`` with ``step = window / T``, so each clip lies in its own slot of the
window, and ``offset`` (the same for every clip, at most ``step`` minus one clip) is drawn
in training and spread over the test views. Clip starts are never closer than
``clip_seconds``: a window too short for ``T`` clips that far apart holds only the clips
that fit, and the video is *short*. ``short_videos`` says what becomes of it (``data.
short_videos``): ``pad`` keeps it, the clips that do not fit repeating the last one and
marked invalid (``valid`` is False, so the model masks them), ``skip`` leaves it out
(``ShortVideo``). The loaders count both. A window shorter than one clip has no clip at
all and is skipped whatever the policy (``TooShort``). (Where a clip is longer than
``window / T``, which only a ``clip_seconds`` shorter than a clip's frames allows, the
step is the one that ends the last clip at the window's end.)

Training draws the sequence offset, the short side of the resized frames (``short_side``
range), the crop position and a horizontal flip (applied where ``flip`` is set) from a
generator keyed by ``(seed, epoch, index)``, so a sample's augmentation does not depend
on which worker or loader produced it. Testing takes ``test_views`` offsets evenly
spread over the slack and ``test_crops`` crops along the long side of frames whose short
side is ``crop_size``.

Audio-only records (no frame rate) use a 100 Hz tick grid in place of frames, with one
clip being one log-mel patch (``mel_frames * hop_length`` samples).
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
    short_videos: str = "pad"  # "pad" or "skip": what becomes of a window too short for T clips
    log_mel: str = "db"  # the log form of avbert.data.audio.LogMel: "db" or "ln"
    flip: bool = True  # mirror half of the training crops

    @classmethod
    def from_config(cls, data, train: bool = True) -> "ClipSpec":
        """Geometry of a ``DataConfig``: hop from ``hop_ms``, FFT size ``n_fft`` (twice the
        hop when unset); test samples (``train=False``) are cropped to ``test_crop_size``
        where it is set."""
        hop = max(1, int(round(data.hop_ms * data.sample_rate / 1000.0)))
        crop = data.crop_size if train or not data.test_crop_size else data.test_crop_size
        return cls(clips=data.clips, clip_seconds=data.clip_seconds,
                   frames_per_clip=data.frames_per_clip, frame_stride=data.frame_stride,
                   crop_size=crop, short_side=tuple(data.short_side),
                   sample_rate=data.sample_rate, n_mels=data.n_mels,
                   mel_frames=data.mel_frames, hop_length=hop, n_fft=data.n_fft or 2 * hop,
                   spec_augment=data.spec_augment, test_views=data.test_views,
                   test_crops=data.test_crops, short_videos=data.short_videos, log_mel=data.log_mel,
                   flip=data.flip)

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

        return LogMel(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, scale=self.log_mel)


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
    """The record's window is shorter than one clip."""


class ShortVideo(ValueError):
    """The record's window holds fewer than ``T`` clips and the policy is ``skip``."""


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


def window_units(record, rate: float, units: int) -> tuple[int, int]:
    """``[first, end)`` grid units of the record's window clamped to the file (the whole
    file when the record has no window)."""
    window = getattr(record, "window", None)
    if not window:
        return 0, units
    first = min(units, max(0, int(round(window[0] * rate))))
    return first, min(units, max(first, int(round(window[1] * rate))))


@dataclass(frozen=True)
class SequenceLayout:
    """Where a record's clips go, in grid units (frames, or ticks for audio-only records):
    clip ``t`` starts at ``origin + offset + floor(t * step)`` for an ``offset`` in ``[0,
    slack]``; the first ``valid`` clips fit the window (``T`` unless the video is short),
    each ``clip`` units long."""

    origin: int
    step: float
    valid: int
    slack: float
    clip: int


def sequence_layout(spec: ClipSpec, record) -> SequenceLayout:
    """The clip layout of ``record``'s window (see the module docstring). Raises
    ``TooShort`` when not even one clip fits."""
    rate, units, clip, _ = _grid(spec, record)
    origin, end = window_units(record, rate, units)
    span = end - origin
    if span < clip:
        raise TooShort(f"a window of {span} frames (of {units}), one clip needs {clip}")
    nominal = max(1.0, spec.clip_seconds * rate)
    if spec.clips == 1:
        return SequenceLayout(origin, nominal, 1, float(span - clip), clip)
    even = span / spec.clips if clip <= span / spec.clips else (span - clip) / (spec.clips - 1)
    step = max(nominal, even)
    valid = min(spec.clips, 1 + int(math.floor((span - clip) / step + 1e-9)))
    return SequenceLayout(origin, step, valid, max(0.0, span - clip - (valid - 1) * step), clip)


def fitting_clips(spec: ClipSpec, record) -> int:
    """How many of the ``T`` clips fit the record's window (0: not one)."""
    try:
        return sequence_layout(spec, record).valid
    except TooShort:
        return 0


def plan_clips(spec: ClipSpec, record, offset: int) -> ClipPlan:
    """The clips of the sequence ``offset`` units into the record's window."""
    rate, _, _, window_seconds = _grid(spec, record)
    layout = sequence_layout(spec, record)
    offsets = np.floor(np.arange(spec.clips) * layout.step + 1e-9).astype(np.int64)
    offsets[layout.valid:] = offsets[layout.valid - 1]
    starts = layout.origin + offset + offsets
    frames = starts[:, None] + np.arange(spec.frames_per_clip)[None, :] * spec.frame_stride
    if not record.fps:  # audio-only: the window start is what matters
        frames = np.repeat(starts[:, None], spec.frames_per_clip, axis=1)
    return ClipPlan(frames=frames, starts=starts / rate, window_seconds=window_seconds,
                    valid=np.arange(spec.clips) < layout.valid)


def train_plan(spec: ClipSpec, record, rng: np.random.Generator) -> ClipPlan:
    """One sequence at a random offset."""
    slack = sequence_layout(spec, record).slack
    return plan_clips(spec, record, int(rng.integers(0, int(math.floor(slack)) + 1)))


def eval_plans(spec: ClipSpec, record) -> list[ClipPlan]:
    """``test_views`` sequences with evenly spread offsets (centred for one view)."""
    slack = int(math.floor(sequence_layout(spec, record).slack))
    if spec.test_views == 1:
        return [plan_clips(spec, record, slack // 2)]
    offsets = np.round(np.linspace(0, slack, spec.test_views)).astype(int)
    return [plan_clips(spec, record, int(offset)) for offset in offsets]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame size after scaling the short side to ``short_side`` (aspect kept)."""
    if height <= width:
        return short_side, max(short_side, int(round(width * short_side / height)))
    return max(short_side, int(round(height * short_side / width))), short_side


def train_crop(spec: ClipSpec, height: int, width: int, rng: np.random.Generator) -> CropPlan:
    """Scale jitter over ``short_side``, a random ``crop_size`` square, a coin-flip mirror
    (drawn whether or not ``spec.flip`` applies it, so the other draws do not depend on it)."""
    low, high = spec.short_side
    side = max(int(rng.integers(low, high + 1)), spec.crop_size)
    out_h, out_w = resized_size(height, width, side)
    top = int(rng.integers(0, out_h - spec.crop_size + 1))
    left = int(rng.integers(0, out_w - spec.crop_size + 1))
    mirror = bool(rng.random() < 0.5)
    return CropPlan(out_h, out_w, top, left, mirror and spec.flip)


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
    """The views, crops and masking seed of ``record``. Raises ``TooShort``, and
    ``ShortVideo`` for a short video under the ``skip`` policy."""
    if spec.short_videos == "skip":
        fits = fitting_clips(spec, record)
        if 0 < fits < spec.clips:
            raise ShortVideo(f"its window holds {fits} of {spec.clips} clips {spec.clip_seconds:g} s apart")
    height, width = record.height or 0, record.width or 0
    if train:
        rng = sample_rng(seed, epoch, record.index)
        clips = train_plan(spec, record, rng)
        crop = train_crop(spec, height, width, rng) if record.fps else None
        mask_seed = int(rng.integers(0, 2**62)) if spec.spec_augment > 0 else None
        return SamplePlan([(clips, crop)], mask_seed)
    crops = eval_crops(spec, height, width) if record.fps else [None] * spec.test_crops
    return SamplePlan([(clips, crop) for clips in eval_plans(spec, record) for crop in crops], None)
