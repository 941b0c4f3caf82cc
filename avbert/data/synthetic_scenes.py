"""A second synthetic audio-visual world ("scenes"), written as real H.264 + AAC .mp4 files.

Each video is T clips; in every clip one latent *event* (from ``num_events`` types)
causes both what is seen and what is heard:

- picture: a drifting sinusoidal grating (stripes) whose orientation (``num_events``
  angles evenly spaced over 180 degrees) and drift velocity (direction sign and speed)
  are fixed by the event; the speeds keep the event readable in horizontally mirrored
  clips (``event_drifts``);
- sound: band-limited noise bursts whose band centre (log-spaced over ``band_hz``) and
  burst rate are fixed by the event.

Unlike world 1 (``avbert.data.synthetic``), whose background, hum, gain and brightness
are drawn once per video, every nuisance here is drawn *per clip*, from separate random
streams for picture and sound: the grating's dark/light colours, contrast, spatial
phase and frequency and the pixel-noise level; the sound's loudness, noise floor and a
low hum (frequency and level). A clip boundary is a hard cut in both modalities (with
10 ms audio fades so the cut does not click). So nothing but the clip's event ties its
sound to its picture: a model cannot pair them by recognising the video.

The class is a temporal pattern with its own rule: class ``c`` steps through event
types as ``e_t = (e_{t-1} + step[c]) mod E`` for distinct nonzero seeded steps (hence
``num_classes <= num_events - 1``); the first event is uniform and with probability
``event_noise`` a clip's event is uniform instead. Each clip's event is therefore
uniform whatever the class; one clean transition identifies the class.

Everything is deterministic in ``(spec.seed, index)``. ``write_generic_tree`` writes
``ROOT/<split>/class<k>/scene_<index>.mp4``, the ``generic`` layout that
``tools/prepare_data.py generic`` reads; ``tools/make_scenes.py`` is its command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Optional

import av
import numpy as np

from avbert.data.synthetic import (
    RawVideo,
    VideoGrid,
    _audio_frame,
    _encode,
    _rng,
    _video_frames,
)
from avbert.rundir import replaced_on_success

WORLD = 2
"""First spawn key of every random stream here: world 1 uses keys 0 and 1, so the two
worlds never share a stream for the same ``(seed, index)``."""

FADE_SECONDS = 0.01
BAND_OCTAVES = 1 / 3  # full width of each event's noise band
GRATING_CYCLES_PER_PIXEL = 0.125  # nominal spatial frequency: an 8-pixel period
MAX_DRIFT_HZ = 2.0  # fastest grating drift (``event_drifts``), cycles per second


@dataclass(frozen=True)
class ScenesSpec(VideoGrid):
    """Size and difficulty of a scenes dataset; the defaults make the tiny one.

    A video is ``clips`` x ``frames_per_clip`` frames of ``frame_size``^2 at ``fps`` (2 s
    of 40x40 at 8 fps by default: the tiny loader scales the short side to 32-40 and
    crops 32) with mono audio at ``sample_rate``. Difficulty, all per clip: the pixel
    noise std is drawn in ``[pixel_noise / 4, pixel_noise]`` (0..255 scale), the noise
    floor std in ``[audio_noise / 10, audio_noise]`` (full scale 1), the hum level in
    ``[0, hum_level]``; ``event_noise`` is the chance a clip leaves its class chain.
    Event ``e``'s noise band is centred on the ``e``-th of ``num_events`` frequencies
    log-spaced over ``band_hz``. Every ``holdout_every``-th video is in the "val" split.
    """

    num_videos: int = 512
    num_classes: int = 4
    num_events: int = 6
    clips: int = 4
    frames_per_clip: int = 4
    frame_size: int = 40
    fps: float = 8.0
    sample_rate: int = 16000
    band_hz: tuple[float, float] = (400.0, 3200.0)
    event_noise: float = 0.2
    pixel_noise: float = 16.0
    audio_noise: float = 0.02
    hum_level: float = 0.15
    holdout_every: int = 5
    seed: int = 0

    def __post_init__(self):
        problems = list(self._problems())
        if problems:
            raise ValueError("ScenesSpec: " + "; ".join(problems))

    def _problems(self) -> Iterable[str]:
        if self.num_events < 2:
            yield f"num_events is {self.num_events}; it must be at least 2 (a class steps between events)"
        if not 1 <= self.num_classes <= self.num_events - 1:
            yield (f"num_classes is {self.num_classes}; it must be in [1, num_events - 1] = "
                   f"[1, {self.num_events - 1}]: each class steps through the events by a distinct nonzero step")
        if self.num_videos < 0 or self.clips < 1 or self.frames_per_clip < 1:
            yield "num_videos must be >= 0, clips and frames_per_clip >= 1"
        if self.frame_size < 8 or self.frame_size % 2:
            yield f"frame_size is {self.frame_size}; it must be even (yuv420p) and at least 8"
        if self.fps <= 2 * MAX_DRIFT_HZ:
            yield f"fps is {self.fps}; it must exceed {2 * MAX_DRIFT_HZ:g} or the fastest grating drift aliases"
        if abs(self.clip_duration * self.sample_rate - self.clip_samples) > 1e-6:
            yield (f"a clip lasts {self.clip_duration:g} s, not a whole number of samples at "
                   f"{self.sample_rate} Hz: clip cuts would drift between picture and sound")
        low, high = self.band_hz
        if not 0 < low < high or high * 2 ** (BAND_OCTAVES / 2) >= self.sample_rate / 2:
            yield (f"band_hz is {self.band_hz}; it must be 0 < low < high with the top band below "
                   f"the Nyquist frequency ({self.sample_rate / 2:g} Hz)")
        if not 0.0 <= self.event_noise <= 1.0:
            yield f"event_noise is {self.event_noise}; it is a probability, in [0, 1]"
        if min(self.pixel_noise, self.audio_noise, self.hum_level) < 0:
            yield "pixel_noise, audio_noise and hum_level must be >= 0"
        if self.holdout_every < 2:
            yield f"holdout_every is {self.holdout_every}; it must be at least 2 (1 leaves no train split)"


def class_steps(spec: ScenesSpec) -> np.ndarray:
    """``[num_classes]`` distinct nonzero steps mod ``num_events``, seeded."""
    choices = _rng(spec.seed, WORLD, 0).permutation(np.arange(1, spec.num_events))
    return choices[: spec.num_classes]


def event_orientations(num_events: int) -> np.ndarray:
    """``[E]`` grating wave-vector angles in radians, evenly spaced over [0, pi)."""
    return np.pi * np.arange(num_events) / num_events


def event_drifts(num_events: int) -> np.ndarray:
    """``[E]`` grating drift in cycles per second along the wave vector: the sign
    alternates with the event; the speed is 1 Hz for ``e <= E / 2``, 2 Hz above. A
    horizontal mirror (the loaders' train-time flip) turns orientation ``theta`` into
    ``180 - theta`` and keeps the drift, so it shows event ``e`` at event ``E - e``'s
    orientation; the speeds differ across every such pair, so a mirrored clip still
    shows which event it is."""
    events = np.arange(num_events)
    return np.where(events % 2, -1.0, 1.0) * np.where(2 * events <= num_events, 1.0, MAX_DRIFT_HZ)


def event_bands(spec: ScenesSpec) -> np.ndarray:
    """``[E]`` noise-band centre frequencies in Hz, log-spaced over ``spec.band_hz``."""
    low, high = spec.band_hz
    return low * (high / low) ** (np.arange(spec.num_events) / (spec.num_events - 1))


def event_burst_rates(num_events: int) -> np.ndarray:
    """``[E]`` noise bursts per second (3, 5 or 8)."""
    return np.array([3.0, 5.0, 8.0])[np.arange(num_events) % 3]


def sample_events(spec: ScenesSpec, label: int, rng: np.random.Generator) -> np.ndarray:
    """``[T]`` event sequence of one video of class ``label``."""
    step = class_steps(spec)[label]
    events = np.empty(spec.clips, dtype=np.int64)
    events[0] = rng.integers(spec.num_events)
    for t in range(1, spec.clips):
        follow = rng.random() >= spec.event_noise
        events[t] = (events[t - 1] + step) % spec.num_events if follow else rng.integers(spec.num_events)
    return events


def scene_events(spec: ScenesSpec, index: int) -> tuple[int, np.ndarray]:
    """Label and ``[T]`` events of video ``index``, without rendering it."""
    rng = _rng(spec.seed, WORLD, 1, index)
    label = int(rng.integers(spec.num_classes))
    return label, sample_events(spec, label, rng)


def render_clip_frames(spec: ScenesSpec, event: int, rng: np.random.Generator) -> np.ndarray:
    """``[F, H, W, 3]`` float frames of one clip: the event's drifting grating in a
    random colour pair, contrast, phase and frequency, plus pixel noise of random level."""
    angle = event_orientations(spec.num_events)[event] + rng.normal(0, np.radians(2))
    cycles = GRATING_CYCLES_PER_PIXEL * rng.uniform(0.85, 1.15)
    dark, light = rng.uniform(0, 100, 3), rng.uniform(150, 255, 3)
    contrast = rng.uniform(0.3, 1.0)
    phase = rng.uniform(0, 2 * np.pi)
    noise = spec.pixel_noise * rng.uniform(0.25, 1.0)
    pix = np.arange(spec.frame_size) - (spec.frame_size - 1) / 2
    along = np.cos(angle) * pix[None, :] + np.sin(angle) * pix[:, None]  # [H, W]
    shift = 2 * np.pi * event_drifts(spec.num_events)[event] * np.arange(spec.frames_per_clip) / spec.fps
    wave = np.sin(2 * np.pi * cycles * along[None] - shift[:, None, None] + phase)  # [F, H, W]
    mid, half = (light + dark) / 2, contrast * (light - dark) / 2
    frames = mid + wave[..., None] * half
    return frames + rng.normal(0, noise, frames.shape)


def band_noise(spec: ScenesSpec, centre: float, rng: np.random.Generator) -> np.ndarray:
    """``[clip_samples]`` unit-RMS noise with a raised-cosine band ``BAND_OCTAVES`` wide
    (in log frequency) around ``centre``."""
    n = spec.clip_samples
    spectrum = np.fft.rfft(rng.normal(size=n))
    octaves = np.log2(np.maximum(np.fft.rfftfreq(n, 1 / spec.sample_rate), 1.0) / centre)
    mask = np.where(np.abs(octaves) < BAND_OCTAVES / 2, np.cos(np.pi * octaves / BAND_OCTAVES) ** 2, 0.0)
    noise = np.fft.irfft(spectrum * mask, n)
    return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def render_clip_audio(spec: ScenesSpec, event: int, rng: np.random.Generator) -> np.ndarray:
    """``[clip_samples]`` waveform of one clip: the event's noise band in bursts at its
    rate, at random loudness and burst phase, over a random noise floor and low hum,
    faded in and out over 10 ms."""
    t = np.arange(spec.clip_samples) / spec.sample_rate
    centre = event_bands(spec)[event] * rng.uniform(0.96, 1.04)
    rate = event_burst_rates(spec.num_events)[event]
    bursts = (0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) ** 2
    gain = np.exp(rng.uniform(np.log(0.08), np.log(0.3)))  # about 11 dB of loudness range
    wave = gain * bursts * band_noise(spec, centre, rng)
    hum = rng.uniform(0, spec.hum_level) * np.sin(2 * np.pi * rng.uniform(50, 200) * t + rng.uniform(0, 2 * np.pi))
    floor = rng.normal(0, spec.audio_noise * rng.uniform(0.1, 1.0), t.shape)
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / FADE_SECONDS)
    return (wave + hum + floor) * ramp


def generate_scene(spec: ScenesSpec, index: int) -> RawVideo:
    """The video ``index`` of ``spec``: depends only on ``(spec, index)``. Each clip's
    picture and sound draw their nuisance from their own streams, so they are
    independent of each other and of every other clip."""
    label, events = scene_events(spec, index)
    frames = [render_clip_frames(spec, int(e), _rng(spec.seed, WORLD, 2, index, t)) for t, e in enumerate(events)]
    audio = [render_clip_audio(spec, int(e), _rng(spec.seed, WORLD, 3, index, t)) for t, e in enumerate(events)]
    frames = np.clip(np.round(np.concatenate(frames)), 0, 255).astype(np.uint8)
    waveform = np.clip(np.concatenate(audio), -1.0, 1.0).astype(np.float32)
    return RawVideo(frames, waveform, spec.fps, spec.sample_rate, label, index, events)


def _add_h264_stream(container, fps: float, width: int, height: int):
    """Constant-rate H.264 without B-frames (``ultrafast``), so packets come in
    presentation order and frame ``k`` is shown at ``k / fps`` from 0."""
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "12"}
    stream.codec_context.thread_count = 1
    return stream


def write_mp4(raw: RawVideo, path: str | Path) -> Path:
    """Write ``raw`` as one .mp4: H.264 (yuv420p, constant ``raw.fps``, CRF 12) and mono
    AAC at ``raw.sample_rate``. Written to a hidden temporary name, then renamed, so an
    interrupted run never leaves a truncated .mp4 for the preparer to find."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = raw.frames.shape[1:3]
    with replaced_on_success(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = _add_h264_stream(container, raw.fps, width, height)
        audio = container.add_stream("aac", rate=raw.sample_rate)
        audio.layout = "mono"
        audio.codec_context.thread_count = 1
        _encode(container, video, _video_frames(raw.frames))
        _encode(container, audio, [_audio_frame(raw.waveform, raw.sample_rate, "aac")])
    return path


def scene_path(spec: ScenesSpec, root: str | Path, index: int, label: int) -> Path:
    """``root/<split>/class<label>/scene_<5-digit index>.mp4``; class numbers are
    zero-padded when there are more than 10 classes, so that the ``generic`` layout,
    which sorts class folder names, numbers the classes as ``label`` does."""
    digits = len(str(spec.num_classes - 1))
    return Path(root) / spec.split_of(index) / f"class{label:0{digits}d}" / f"scene_{index:05d}.mp4"


def write_generic_tree(spec: ScenesSpec, root: str | Path, indices=None,
                       progress: Optional[Callable[[Path], None]] = None) -> list[Path]:
    """Write videos ``indices`` (default: all) of ``spec`` under ``root`` in the
    ``generic`` layout; returns their paths in order, calling ``progress(path)`` after
    each. The ``generic`` layout numbers only the class folders it finds, so a tree
    missing a class (too few videos) shifts the class indices above it."""
    paths = []
    for index in range(spec.num_videos) if indices is None else indices:
        raw = generate_scene(spec, index)
        paths.append(write_mp4(raw, scene_path(spec, root, index, raw.label)))
        if progress:
            progress(paths[-1])
    return paths
