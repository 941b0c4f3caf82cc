"""What a media file holds, whether it can be used, and its audio as FLAC (PyAV only).

``probe_media`` opens a file with PyAV's bundled FFmpeg, demuxes every video packet
(cheap: no decoding) to count frames and measure the frame rate, and decodes the first
frame and the last group of pictures to prove the stream decodes from start to end.
Anything unusable raises ``ProbeError`` with one of the ``Reason`` values, which the
preparer's report and the loaders' skip counters share.

``extract_audio`` writes a file's audio track once as mono 16-bit FLAC at the
configured rate, shifted so that sample 0 is the time of the first video frame (the
loaders index audio by frame time). ``transcode_cfr`` rewrites a variable-frame-rate
video at a constant rate (VP9/WebM, which every loader decodes).
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Optional

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from avbert.rundir import replaced_on_success


class Reason:
    """Why a file is not used: the keys of the preparer's report and of the loaders'
    ``skipped/<reason>`` counters."""

    MISSING = "missing"
    UNREADABLE = "unreadable"  # a directory, a broken link, no read permission
    EMPTY = "empty"
    NOT_MEDIA = "not_media"  # no container FFmpeg recognises (e.g. text named .mp4)
    CORRUPT = "corrupt"  # a media signature, but the streams do not open or decode
    TRUNCATED = "truncated"
    NO_VIDEO = "no_video"
    NO_AUDIO = "no_audio"
    ONE_FRAME = "one_frame"
    TOO_SHORT = "too_short"
    SHORT_VIDEO = "short_video"  # fewer than T clips fit its window, under data.short_videos: skip
    SEGMENT_OUTSIDE = "segment_outside"  # the annotated segment lies outside the file
    VFR = "variable_frame_rate"
    TIMEOUT = "timeout"
    CHANGED = "changed"  # size differs from the manifest: rewritten after preparation
    DECODE_ERROR = "decode_error"  # failed in a loader's decoder at run time


class ProbeError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


SIGNATURES = {  # container family -> extensions that name it
    "matroska": {".webm", ".mkv"},
    "mp4": {".mp4", ".m4v", ".mov", ".m4a", ".3gp"},
    "avi": {".avi"},
    "wav": {".wav"},
    "flac": {".flac"},
    "ogg": {".ogg", ".opus", ".oga"},
}

MAX_PACKETS = 2_000_000
"""Demuxing stops here: no real clip has this many frames, a looping demuxer would."""


def sniff(head: bytes) -> Optional[str]:
    """Container family from the first bytes of a file, or None."""
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    return None


def check_path(path: str) -> tuple[int, Optional[str]]:
    """``(size, container family)`` of a readable, non-empty file; else ``ProbeError``."""
    if not os.path.lexists(path):
        raise ProbeError(Reason.MISSING, "no such file")
    if not os.path.exists(path):
        raise ProbeError(Reason.UNREADABLE, "broken symbolic link")
    if os.path.isdir(path):
        raise ProbeError(Reason.UNREADABLE, "is a directory")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        size = os.path.getsize(path)
    except OSError as err:
        raise ProbeError(Reason.UNREADABLE, f"{type(err).__name__}: {err.strerror or err}") from None
    if size == 0:
        raise ProbeError(Reason.EMPTY, "zero bytes")
    return size, sniff(head)


@dataclass
class VideoInfo:
    codec: str
    fps: float
    num_frames: int
    width: int
    height: int
    start: float  # seconds, presentation time of the first frame
    duration: float
    vfr: bool


@dataclass
class MediaInfo:
    path: str
    size: int
    container: Optional[str]
    duration: float
    video: Optional[VideoInfo]
    audio_codec: Optional[str]
    audio_rate: Optional[int]
    flags: list[str] = field(default_factory=list)


def _open(path: str, family: Optional[str]):
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        reason = Reason.CORRUPT if family else Reason.NOT_MEDIA
        raise ProbeError(reason, f"cannot open: {err}") from None


def _video_packets(container, stream) -> tuple[np.ndarray, list[int], Optional[str]]:
    """Presentation times (stream units) of all video packets, keyframe pts, and the
    demux error that stopped early (None when the file ended normally)."""
    pts, keys, error = [], [], None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
            if len(pts) >= MAX_PACKETS:
                break
    except av.error.FFmpegError as err:
        error = str(err)
    return np.sort(np.asarray(pts, dtype=np.int64)), keys, error


def frame_rate(pts: np.ndarray, time_base: Fraction, nominal) -> tuple[float, bool]:
    """Frame rate and whether it varies (more than 2% of the frame intervals off their
    median by more than 25%). The rate is the mean over the whole stream, or the
    container's nominal rate when it agrees within 0.5% (timestamps rounded to
    milliseconds, as WebM stores them, make single intervals uneven)."""
    if len(pts) < 2:
        return float(nominal or 0.0), False
    deltas = np.diff(pts).astype(np.float64)
    median = float(np.median(deltas))
    if median <= 0:
        return float(nominal or 0.0), True
    vfr = bool((np.abs(deltas - median) > 0.25 * median).mean() > 0.02)
    measured = 1.0 / (float(deltas.mean()) * float(time_base))
    if nominal and abs(float(nominal) - measured) <= 0.005 * measured:
        return float(nominal), vfr
    return float(Fraction(measured).limit_denominator(1001)), vfr


def _decode_ends(path: str, stream_index: int, last_key: int) -> None:
    """Decode the first frame and everything from the last keyframe on."""
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams[stream_index]
        stream.codec_context.thread_count = 1
        next(container.decode(stream))
        container.seek(last_key, stream=stream, backward=True, any_frame=False)
        for _ in container.decode(stream):
            pass


def _probe_video(path: str, container, stream, header_duration: float) -> VideoInfo:
    time_base = stream.time_base
    pts, keys, error = _video_packets(container, stream)
    if len(pts) == 0:
        raise ProbeError(Reason.CORRUPT, f"no decodable video packet ({error or 'empty stream'})")
    fps, vfr = frame_rate(pts, time_base, stream.average_rate)
    start = float(pts[0] * time_base)
    duration = len(pts) / fps if fps else 0.0
    declared = float(stream.duration * time_base) if stream.duration else header_duration
    if error or (declared and duration < 0.9 * declared - 1.0):
        raise ProbeError(Reason.TRUNCATED, f"video stops at {duration:.2f}s of {declared:.2f}s"
                         + (f" ({error})" if error else ""))
    try:
        _decode_ends(path, stream.index, keys[-1] if keys else int(pts[0]))
    except (av.error.FFmpegError, StopIteration) as err:
        raise ProbeError(Reason.CORRUPT, f"video does not decode: {err or 'no frame'}") from None
    codec = stream.codec_context.name
    return VideoInfo(codec, fps, len(pts), stream.codec_context.width, stream.codec_context.height,
                     start, duration, vfr)


def probe_media(path: str) -> MediaInfo:
    """Streams, frame count and rate of a media file that decodes; ``ProbeError`` if not."""
    size, family = check_path(path)
    flags = []
    if family and Path(path).suffix.lower() not in SIGNATURES[family]:
        flags.append(f"extension_mismatch: {Path(path).suffix} holds {family}")
    container = _open(path, family)
    with container:
        header = (container.duration or 0) / av.time_base
        video_stream = next((s for s in container.streams.video if s.codec_context), None)
        audio_stream = next((s for s in container.streams.audio if s.codec_context), None)
        if video_stream is None and audio_stream is None:
            raise ProbeError(Reason.CORRUPT if family else Reason.NOT_MEDIA, "no audio or video stream")
        video = _probe_video(path, container, video_stream, header) if video_stream else None
        audio_codec = audio_stream.codec_context.name if audio_stream else None
        audio_rate = audio_stream.codec_context.sample_rate if audio_stream else None
    duration = video.duration if video else header
    return MediaInfo(path, size, family, duration, video, audio_codec, audio_rate, flags)


def _stat(path: str, expected: Optional[int]) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        reason = Reason.UNREADABLE if os.path.lexists(path) else Reason.MISSING
        detail = "broken symbolic link" if reason == Reason.UNREADABLE else "no such file"
        raise ProbeError(reason, f"{path}: {detail}") from None
    except OSError as err:
        raise ProbeError(Reason.UNREADABLE, f"{path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ProbeError(Reason.UNREADABLE, f"{path}: not a regular file")
    if info.st_size == 0:
        raise ProbeError(Reason.EMPTY, f"{path}: zero bytes")
    if expected is not None and info.st_size != expected:
        raise ProbeError(Reason.CHANGED, f"{path}: {info.st_size} bytes, the manifest says {expected}")


def check_record(record, need_video: bool, need_audio: bool) -> None:
    """Cheap run-time checks of a manifest record before decoding (``ProbeError``): what
    the manifest says, and a ``stat`` of its files (present, regular, size unchanged)."""
    if record.vfr:
        raise ProbeError(Reason.VFR, "variable frame rate: frame windows cannot follow the audio")
    if need_video and not record.video:
        raise ProbeError(Reason.NO_VIDEO, "the record has no video")
    if need_video and (record.num_frames or 0) <= 1:
        raise ProbeError(Reason.ONE_FRAME, f"{record.num_frames} frame(s)")
    if need_audio and not record.audio:
        raise ProbeError(Reason.NO_AUDIO, "the record has no audio")
    if need_video:
        _stat(record.video, record.video_bytes)
    if record.audio:
        _stat(record.audio, record.audio_bytes)


def read_bytes(path: str) -> np.ndarray:
    """A whole file as uint8 (``ProbeError`` when it cannot be read)."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ProbeError(Reason.UNREADABLE, f"{path}: {err.strerror or err}") from None


@lru_cache(maxsize=4)
def silent_flac(sample_rate: int) -> np.ndarray:
    """Bytes of a 10 ms silent FLAC: the audio of records that have none."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "silence.flac")
        write_flac(np.zeros(sample_rate // 100, dtype=np.int16), path, sample_rate)
        return np.fromfile(path, dtype=np.uint8)


def _decode_mono(path: str, sample_rate: int) -> tuple[np.ndarray, float]:
    """The first audio track as int16 mono at ``sample_rate`` and its start time."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks, start = [], None
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            if start is None:
                start = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise ProbeError(Reason.NO_AUDIO, "the audio track holds no samples")
    return np.concatenate(chunks).astype(np.int16), start or 0.0


def align(samples: np.ndarray, offset_seconds: float, sample_rate: int) -> np.ndarray:
    """Shift audio that starts ``offset_seconds`` after time zero: pad (or trim) its head."""
    shift = int(round(offset_seconds * sample_rate))
    if shift >= 0:
        return np.concatenate([np.zeros(shift, dtype=samples.dtype), samples])
    return samples[-shift:]


def write_flac(samples: np.ndarray, path: str, sample_rate: int) -> int:
    """Write int16 mono samples as FLAC (atomically); returns the file size."""
    with replaced_on_success(path) as tmp, av.open(str(tmp), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate)
        stream.layout, stream.format = "mono", "s16"
        for begin in range(0, len(samples), 4096):
            chunk = np.ascontiguousarray(samples[None, begin:begin + 4096])
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, begin
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return os.path.getsize(path)


def extract_audio(src: str, dst: str, sample_rate: int, video_start: float = 0.0) -> int:
    """Write ``src``'s audio to ``dst`` as mono FLAC aligned to ``video_start``; returns
    the FLAC's size."""
    try:
        samples, start = _decode_mono(src, sample_rate)
    except av.error.FFmpegError as err:
        raise ProbeError(Reason.CORRUPT, f"audio does not decode: {err}") from None
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    return write_flac(align(samples, start - video_start, sample_rate), dst, sample_rate)


def rgb(reformatter: VideoReformatter, frame: av.VideoFrame) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB of a decoded frame, converted in the calling thread.

    swscale's default (``threads=0``, one thread per core) hands every frame to a pool
    and waits for it: about 50 us of dispatch per call whatever the frame size, against
    30 us for converting a 320x240 frame in place. The pixels are the
    same; decoding already runs one thread per worker, and workers fill the cores."""
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _timed_frames(container, stream):
    reformatter = VideoReformatter()  # one colour-conversion context for every frame
    for frame in container.decode(stream):
        if frame.pts is not None:
            yield float(frame.pts * frame.time_base), rgb(reformatter, frame)


def cfr_grid(timed, fps: float, start: float):
    """``(k, rgb)`` on the grid ``start + k / fps``; each point takes the nearest frame."""
    k, prev_time, prev = 0, 0.0, None
    for time, rgb in timed:
        if prev is not None:
            while start + k / fps < (prev_time + time) / 2:
                yield k, prev
                k += 1
        prev_time, prev = time, rgb
    while prev is not None and (k == 0 or start + k / fps <= prev_time + 0.5 / fps):
        yield k, prev
        k += 1


def transcode_cfr(src: str, dst: str, fps: float) -> None:
    """Rewrite ``src``'s video at a constant ``fps`` as VP9/WebM (no audio track)."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with (replaced_on_success(dst) as tmp, av.open(src, metadata_errors="ignore") as source,
          av.open(str(tmp), "w", format="webm") as out):
        stream = source.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        encoder = out.add_stream("libvpx-vp9", rate=rate)
        encoder.width, encoder.height = stream.codec_context.width, stream.codec_context.height
        encoder.pix_fmt = "yuv420p"
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "crf": "18", "b": "0"}
        for k, rgb in cfr_grid(_timed_frames(source, stream), fps, start):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            out.mux(encoder.encode(frame))
        out.mux(encoder.encode(None))
