"""The suite's built-in synthetic audio-visual dataset.

Each video is T clips. In every clip one latent *event* (from ``num_events`` types)
causes both what is seen and what is heard:

- picture: an object whose colour (hue), shape (square, disc, diamond) and motion
  direction are fixed by the event, over a random dim gradient background with pixel
  noise and jittered size, position, speed and brightness;
- sound: a tone whose pitch (three octaves, log-spaced over event types) and amplitude
  modulation rate are fixed by the event, with random gain, phase, pitch jitter and a
  background white-noise floor.

Distractors that carry no information: a grey square drifting over the whole video and a
low hum (60-150 Hz, below every event pitch) of random level.

The class is a temporal pattern: class ``c`` follows the event chain ``e -> L[c, e]``
where ``L`` is a seeded Latin square, and with probability ``event_noise`` a clip's event
is instead uniform. The first event is uniform and every row of ``L`` is a permutation, so
each clip's event is uniformly distributed whatever the class: the label is only
recoverable from consecutive clips (context), never from one clip. Because ``L`` is a
Latin square, one clean transition identifies the class (hence ``num_classes <=
num_events``).

Everything is deterministic in ``(spec.seed, index)``. ``SyntheticAVDataset`` serves
in-memory items in the suite's batch format; ``write_media`` writes real VP9/webm +
FLAC files for the media loaders; ``alignment_probe`` builds a flash-and-click video for
audio-visual alignment tests.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import pickle
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from avbert.data import audio as audio_module
from avbert.data.audio import LogMel, clip_logmel

GOLDEN = (5 ** 0.5 - 1) / 2


class VideoGrid:
    """Clip geometry and the train/val split of a synthetic world's spec (a dataclass
    with ``clips``, ``frames_per_clip``, ``fps``, ``sample_rate``, ``num_videos`` and
    ``holdout_every``): a video is ``clips`` consecutive clips of ``frames_per_clip``
    frames, and every ``holdout_every``-th video is held out."""

    @property
    def clip_duration(self) -> float:
        return self.frames_per_clip / self.fps

    @property
    def num_frames(self) -> int:
        return self.clips * self.frames_per_clip

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_duration * self.sample_rate))

    def split_of(self, index: int) -> str:
        """Every ``holdout_every``-th video (index % n == n - 1) is "val", the rest "train"."""
        return "val" if index % self.holdout_every == self.holdout_every - 1 else "train"

    def indices(self, split: str | None = None) -> list[int]:
        return [i for i in range(self.num_videos) if split in (None, self.split_of(i))]


@dataclass(frozen=True)
class SyntheticSpec(VideoGrid):
    """Size and difficulty of a synthetic dataset; the defaults make the tiny one.

    A video is ``clips`` x ``frames_per_clip`` frames of ``frame_size``^2 at ``fps`` (2 s
    by default) with mono audio at ``sample_rate``; each clip gives an ``n_mels`` x
    ``mel_frames`` log-mel patch (hop = clip samples // mel_frames) in the ``log_mel``
    form of ``avbert.data.audio.LogMel`` (the data config's). Difficulty:
    ``event_noise`` (chance a clip leaves its class chain), ``pixel_noise`` (std, 0..255
    scale), ``audio_noise`` (white-noise std, full scale 1). Every ``holdout_every``-th
    video is in the "val" split.
    """

    num_videos: int = 512
    num_classes: int = 8
    num_events: int = 8
    clips: int = 4
    frames_per_clip: int = 4
    frame_size: int = 32
    fps: float = 8.0
    sample_rate: int = 16000
    n_mels: int = 40
    mel_frames: int = 32
    n_fft: int = 400
    log_mel: str = "db"
    event_noise: float = 0.2
    pixel_noise: float = 12.0
    audio_noise: float = 0.05
    holdout_every: int = 5
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.num_classes <= self.num_events:
            raise ValueError("num_classes must be in [1, num_events]: each class is a "
                             "row of a Latin square over event types")
        if self.frame_size % 2:
            raise ValueError("frame_size must be even (yuv420p)")

    @property
    def hop_length(self) -> int:
        """Largest hop that still yields at least ``mel_frames`` frames per clip."""
        return max(1, self.clip_samples // self.mel_frames)

    def clip_starts(self) -> np.ndarray:
        return np.arange(self.clips) * self.clip_duration

    def logmel(self) -> LogMel:
        return LogMel(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, scale=self.log_mel)


@dataclass
class RawVideo:
    """One generated video as media: uint8 RGB frames ``[N, H, W, 3]`` and a float32
    mono waveform in [-1, 1]; ``events`` is the latent event of each clip."""

    frames: np.ndarray
    waveform: np.ndarray
    fps: float
    sample_rate: int
    label: int
    index: int
    events: np.ndarray | None = None


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def class_chains(spec: SyntheticSpec) -> np.ndarray:
    """``[num_classes, num_events]`` next-event table: rows of a seeded Latin square."""
    rng = _rng(spec.seed, 0)
    n = spec.num_events
    square = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
    rows, cols, symbols = rng.permutation(n), rng.permutation(n), rng.permutation(n)
    return symbols[square[rows][:, cols]][: spec.num_classes]


def event_colours(num_events: int) -> np.ndarray:
    """``[E, 3]`` RGB in [0, 1]: hues evenly spaced around the colour wheel."""
    return np.array([colorsys.hsv_to_rgb(e / num_events, 0.85, 0.95)
                     for e in range(num_events)])


def event_pitches(num_events: int) -> np.ndarray:
    """``[E]`` fundamental frequencies in Hz, log-spaced over 300 Hz .. 2400 Hz."""
    return 300.0 * 2.0 ** (3.0 * np.arange(num_events) / max(1, num_events - 1))


def event_directions(num_events: int) -> np.ndarray:
    """``[E]`` motion angles in radians (golden-ratio spacing, all distinct)."""
    return 2 * np.pi * ((np.arange(num_events) * GOLDEN) % 1.0)


def event_shapes(num_events: int) -> np.ndarray:
    """``[E]`` shape ids: 0 square, 1 disc, 2 diamond."""
    return np.arange(num_events) % 3


def event_modulation_rates(num_events: int) -> np.ndarray:
    """``[E]`` amplitude-modulation rates in Hz (the event's rhythm)."""
    return np.array([2.0, 4.0, 6.0, 8.0])[(np.arange(num_events) // 2) % 4]


def sample_events(spec: SyntheticSpec, label: int, rng: np.random.Generator) -> np.ndarray:
    """``[T]`` event sequence of one video of class ``label``."""
    chain = class_chains(spec)[label]
    events = np.empty(spec.clips, dtype=np.int64)
    events[0] = rng.integers(spec.num_events)
    for t in range(1, spec.clips):
        follow = rng.random() >= spec.event_noise
        events[t] = chain[events[t - 1]] if follow else rng.integers(spec.num_events)
    return events


def _background(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """``[H, W, 3]`` dim random gradient, fixed for the whole video."""
    coords = (np.arange(spec.frame_size) + 0.5) / spec.frame_size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    base = rng.uniform(30, 100, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    return base + xx[..., None] * slope[0] + yy[..., None] * slope[1]


def _object_masks(spec: SyntheticSpec, events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N, H, W]`` boolean object masks following each clip's event motion and shape."""
    size, frames = spec.frame_size, spec.frames_per_clip
    radius = size * rng.uniform(0.14, 0.2)
    speed = size * rng.uniform(0.04, 0.07) * (np.arange(frames) - (frames - 1) / 2)
    angle = event_directions(spec.num_events)[events] + rng.normal(0, 0.15, spec.clips)
    start = size * rng.uniform(0.35, 0.65, size=(spec.clips, 2))
    cx = (start[:, 0:1] + np.cos(angle)[:, None] * speed).reshape(-1)
    cy = (start[:, 1:2] + np.sin(angle)[:, None] * speed).reshape(-1)
    pix = np.arange(size) + 0.5
    dx = np.abs(pix[None, None, :] - cx[:, None, None])
    dy = np.abs(pix[None, :, None] - cy[:, None, None])
    dist = np.stack([np.maximum(dx, dy), np.hypot(dx, dy) * 0.9, (dx + dy) * 0.7])
    shape = np.repeat(event_shapes(spec.num_events)[events], frames)
    return np.take_along_axis(dist, shape[None, :, None, None], axis=0)[0] < radius


def _distractor(spec: SyntheticSpec, rng: np.random.Generator):
    """Event-independent small grey square drifting across the whole video (wrapping
    around): ``[N, H, W]`` mask and its ``[3]`` colour."""
    size = spec.frame_size
    half = size * 0.08
    angle = rng.uniform(0, 2 * np.pi)
    velocity = size * rng.uniform(0.03, 0.08) * np.array([np.cos(angle), np.sin(angle)])
    centre = (rng.uniform(0, size, 2) + np.arange(spec.num_frames)[:, None] * velocity) % size
    pix = np.arange(size) + 0.5
    inside_x = np.abs(pix[None, :] - centre[:, 0:1]) < half
    inside_y = np.abs(pix[None, :] - centre[:, 1:2]) < half
    return inside_y[:, :, None] & inside_x[:, None, :], rng.uniform(90, 170) * np.ones(3)


def render_frames(spec: SyntheticSpec, events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 frames of one video with the given per-clip events."""
    masks = _object_masks(spec, events, rng)
    brightness = rng.uniform(0.8, 1.0)
    colour = event_colours(spec.num_events)[events] * 255 * brightness
    colour = np.repeat(colour + rng.normal(0, 8, colour.shape), spec.frames_per_clip, axis=0)
    distractor, grey = _distractor(spec, rng)
    frames = np.where(distractor[..., None], grey, _background(spec, rng))
    frames = np.where(masks[..., None], colour[:, None, None, :], frames)
    frames = frames + rng.normal(0, spec.pixel_noise, frames.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def render_audio(spec: SyntheticSpec, events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[S]`` float32 waveform in [-1, 1]: one modulated tone per clip plus noise."""
    n = spec.clip_samples
    t = np.arange(n) / spec.sample_rate
    pitch = event_pitches(spec.num_events)[events] * rng.uniform(0.97, 1.03, spec.clips)
    rate = event_modulation_rates(spec.num_events)[events]
    phase = rng.uniform(0, 2 * np.pi, size=(2, spec.clips, 1))
    tone = (np.sin(2 * np.pi * pitch[:, None] * t + phase[0])
            + 0.4 * np.sin(4 * np.pi * pitch[:, None] * t + phase[1]))
    envelope = 1.0 - 0.4 * (1.0 - np.cos(2 * np.pi * rate[:, None] * t))
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clip-edge clicks
    gain = rng.uniform(0.25, 0.5)
    wave = (gain * tone * envelope * ramp).reshape(-1)
    hum_t = np.arange(wave.size) / spec.sample_rate  # event-independent distractor
    wave = wave + rng.uniform(0.0, 0.15) * np.sin(2 * np.pi * rng.uniform(60, 150) * hum_t)
    noise_level = spec.audio_noise * rng.uniform(0.5, 1.5)
    wave = wave + rng.normal(0, noise_level, wave.shape)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def generate_video(spec: SyntheticSpec, index: int) -> RawVideo:
    """The video ``index`` of ``spec``: depends only on ``(spec, index)``."""
    rng = _rng(spec.seed, 1, index)
    label = int(rng.integers(spec.num_classes))
    events = sample_events(spec, label, rng)
    frames = render_frames(spec, events, rng)
    waveform = render_audio(spec, events, rng)
    return RawVideo(frames, waveform, spec.fps, spec.sample_rate, label, index, events)


def clip_frames(frames: np.ndarray | torch.Tensor, clips: int) -> torch.Tensor:
    """uint8 ``[..., N, H, W, 3]`` -> ``[..., T, 3, F, H, W]`` (N = T * F)."""
    x = torch.as_tensor(frames)
    *lead, n, h, w, c = x.shape
    x = x.reshape(*lead, clips, n // clips, h, w, c)
    return x.movedim(-1, -4)


def _item_tensors(spec: SyntheticSpec, indices, logmel: LogMel):
    """Uint8 clip frames, normalised log-mel patches, labels and events of ``indices``."""
    raws = [generate_video(spec, i) for i in indices]
    frames = np.zeros((len(raws), spec.num_frames, spec.frame_size, spec.frame_size, 3), np.uint8)
    waves = np.zeros((len(raws), spec.clips * spec.clip_samples), np.float32)
    for k, raw in enumerate(raws):
        frames[k], waves[k] = raw.frames, raw.waveform
    with torch.no_grad():
        audio = clip_logmel(torch.from_numpy(waves), logmel, spec.clip_starts(),
                            spec.clip_duration, spec.mel_frames)
    labels = torch.tensor([raw.label for raw in raws], dtype=torch.int64)
    events = torch.tensor(np.array([raw.events for raw in raws], np.int64).reshape(-1, spec.clips))
    return clip_frames(frames, spec.clips), audio, labels, events


# Splits of at least this many videos are kept on disk: every job of an experiment on the
# synthetic set (each pretraining, each probe) would otherwise spend seconds of CPU
# regenerating the same videos, where loading them takes a fraction of a second.
CACHE_MIN_VIDEOS = 256


def cache_dir() -> Path | None:
    """Where generated splits are kept: ``$AVBERT_CACHE_DIR/synthetic`` (default
    ``~/.cache/avbert/synthetic``); ``AVBERT_CACHE_DIR=off`` keeps nothing."""
    root = os.environ.get("AVBERT_CACHE_DIR", str(Path.home() / ".cache" / "avbert"))
    return None if root == "off" else Path(root) / "synthetic"


def cache_key(spec: SyntheticSpec, indices) -> str:
    """SHA-256 of the spec, the videos and the generator's source (this module and the
    log-mel front end): a changed generator never reads an old file."""
    digest = hashlib.sha256(repr((spec, list(indices))).encode())
    for module in (__file__, audio_module.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:32]


def load_cached(spec: SyntheticSpec, indices):
    """The stored ``(video, audio, labels, events)`` of these videos, or None."""
    folder = cache_dir()
    if folder is None or len(indices) < CACHE_MIN_VIDEOS:
        return None
    path = folder / f"{cache_key(spec, indices)}.pt"
    try:
        tensors = tuple(torch.load(path, weights_only=True))
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):  # absent or damaged
        return None
    return tensors if len(tensors) == 4 and len(tensors[2]) == len(indices) else None


def store_cached(spec: SyntheticSpec, indices, tensors) -> None:
    """Write the tensors atomically (concurrent jobs may generate the same split); a
    cache that cannot be written (read-only home, full disk) is skipped."""
    folder = cache_dir()
    if folder is None or len(indices) < CACHE_MIN_VIDEOS:
        return
    path = folder / f"{cache_key(spec, indices)}.pt"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(list(tensors), tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


class SyntheticAVDataset(torch.utils.data.Dataset):
    """In-memory synthetic videos in the suite's item format.

    Items: ``video`` uint8 pixels ``[T, 3, F, H, W]`` (the model normalises them),
    ``audio`` float32 ``[T, 1, n_mels, mel_frames]`` (normalised log-mel), ``valid``
    bool ``[T]``, ``label`` and ``index`` int64 scalars. All videos of the split are
    generated once at construction (a few milliseconds each). ``events`` holds the
    latent per-clip events ``[len, T]`` for analysis; items are unaugmented.
    """

    def __init__(self, spec: SyntheticSpec = SyntheticSpec(), split: str | None = None,
                 indices=None, chunk: int = 64):
        self.spec = spec
        self.indices = list(spec.indices(split) if indices is None else indices)
        tensors = load_cached(spec, self.indices)
        if tensors is None:
            logmel = spec.logmel()
            parts = [_item_tensors(spec, self.indices[start:start + chunk], logmel)
                     for start in range(0, max(1, len(self.indices)), chunk)]
            tensors = tuple(torch.cat(p) for p in zip(*parts))
            store_cached(spec, self.indices, tensors)
        self.video, self.audio, self.labels, self.events = tensors

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return {
            "video": self.video[i],
            "audio": self.audio[i],
            "valid": torch.ones(self.spec.clips, dtype=torch.bool),
            "label": self.labels[i],
            "index": torch.tensor(self.indices[i], dtype=torch.int64),
        }


def _add_video_stream(container, fps: float, width: int, height: int):
    stream = container.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"}
    stream.codec_context.thread_count = 1
    return stream


def _add_audio_stream(container, codec: str, sample_rate: int):
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    if codec == "flac":
        stream.format = "s16"
    return stream


def _video_frames(frames: np.ndarray):
    for pts, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        yield frame


def _audio_frame(waveform: np.ndarray, sample_rate: int, codec: str) -> av.AudioFrame:
    if codec == "flac":
        samples, fmt = np.round(waveform * 32767).astype(np.int16), "s16"
    else:
        samples, fmt = waveform.astype(np.float32), "flt"
    frame = av.AudioFrame.from_ndarray(samples[None, :], format=fmt, layout="mono")
    frame.sample_rate, frame.pts = sample_rate, 0
    return frame


def _encode(container, stream, frames) -> None:
    for frame in frames:
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_raw(raw: RawVideo, out_dir: str, name: str, split: str,
              mux_audio: bool = False) -> dict:
    """Write ``name.webm`` (VP9, yuv420p, constant ``raw.fps``; with an Opus track when
    ``mux_audio``) and ``name.flac`` (16-bit mono) into ``out_dir``; return the record."""
    os.makedirs(out_dir, exist_ok=True)
    video_path = os.path.join(out_dir, f"{name}.webm")
    audio_path = os.path.join(out_dir, f"{name}.flac")
    height, width = raw.frames.shape[1:3]
    with av.open(video_path, "w") as container:
        video = _add_video_stream(container, raw.fps, width, height)
        opus = _add_audio_stream(container, "libopus", raw.sample_rate) if mux_audio else None
        _encode(container, video, _video_frames(raw.frames))
        if opus is not None:
            _encode(container, opus, [_audio_frame(raw.waveform, raw.sample_rate, "opus")])
    with av.open(audio_path, "w") as container:
        flac = _add_audio_stream(container, "flac", raw.sample_rate)
        _encode(container, flac, [_audio_frame(raw.waveform, raw.sample_rate, "flac")])
    num_frames = len(raw.frames)
    return {"video": video_path, "audio": audio_path, "label": raw.label, "split": split,
            "duration": num_frames / raw.fps, "fps": float(raw.fps),
            "num_frames": num_frames, "codec": "vp9", "index": raw.index,
            "sample_rate": raw.sample_rate}


def write_media(spec: SyntheticSpec, out_dir: str, indices=None,
                mux_audio: bool = False) -> list[dict]:
    """Write videos ``indices`` (default: all) of ``spec`` as ``video_<5-digit index>.webm`` +
    ``.flac`` media files; one record per video, in order."""
    indices = range(spec.num_videos) if indices is None else indices
    return [write_raw(generate_video(spec, i), out_dir, f"video_{i:05d}",
                      spec.split_of(i), mux_audio) for i in indices]


def alignment_probe(spec: SyntheticSpec, flash_time: float,
                    click_time: float | None = None) -> RawVideo:
    """A ``spec.duration`` video of grey frames with one white frame (the one shown at
    ``flash_time``) and silence with one 2 ms full-scale click at ``click_time``
    (default: ``flash_time``). Label and index are -1."""
    click_time = flash_time if click_time is None else click_time
    size = spec.frame_size
    frames = np.full((spec.num_frames, size, size, 3), 64, dtype=np.uint8)
    frames[int(np.floor(flash_time * spec.fps + 1e-9))] = 255
    waveform = np.zeros(int(round(spec.duration * spec.sample_rate)), dtype=np.float32)
    click = 0.9 * np.where(np.arange(max(1, int(0.002 * spec.sample_rate))) % 2, -1.0, 1.0)
    start = int(round(click_time * spec.sample_rate))
    end = min(len(waveform), start + len(click))
    waveform[start:end] = click[: end - start]
    return RawVideo(frames, waveform, spec.fps, spec.sample_rate, -1, -1, None)
