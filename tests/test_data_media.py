"""Media written on the fly for the data tests, and the probe's verdict on each kind of
bad file. Other ``test_data_*`` modules import the writers from here."""

from __future__ import annotations

import dataclasses
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import VideoReformatter

from avbert.data.manifest import MediaRecord
from avbert.data.probe import ProbeError, Reason, probe_media, rgb, write_flac
from avbert.data.pyav_loader import decode_audio
from avbert.data.synthetic import SyntheticSpec, generate_video, write_raw

SPEC = SyntheticSpec(num_videos=16, num_classes=2, num_events=4, clips=4, frames_per_clip=8,
                     frame_size=48, fps=8.0)
"""4-second 48x64 (after widening) VP9 videos at 8 fps with 16 kHz FLAC audio."""

VIDEO_CODECS = {".webm": "libvpx-vp9", ".mkv": "libvpx-vp9", ".mp4": "libx264", ".avi": "mpeg4"}
AUDIO_CODECS = {".webm": ("libopus", 48000, 960), ".mkv": ("libopus", 48000, 960), ".mp4": ("aac", 48000, 1024),
                ".avi": ("pcm_s16le", 16000, 4096), ".wav": ("pcm_s16le", 44100, 4096)}


def widen(frames: np.ndarray) -> np.ndarray:
    """Square frames -> 4:3 landscape frames (so resizing and crops are exercised)."""
    return np.concatenate([frames, frames[:, :, : frames.shape[2] // 3]], axis=2)


def write_good(folder: Path, count: int, spec: SyntheticSpec = SPEC) -> list[dict]:
    """``count`` synthetic VP9/WebM videos with FLAC audio, as writer records."""
    records = []
    for index in range(count):
        raw = generate_video(spec, index)
        raw.frames = widen(raw.frames)
        records.append(write_raw(raw, str(folder), f"good_{index:02d}", "train"))
    return records


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _audio_frames(codec: str, rate: int, chunk: int, seconds: float):
    wave = _tone(seconds, rate)
    layout_fmt = {"aac": "fltp", "libopus": "flt"}.get(codec, "s16")
    for begin in range(0, len(wave), chunk):
        piece = wave[begin:begin + chunk]
        data = piece[None] if layout_fmt != "s16" else np.round(piece * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=layout_fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, begin
        yield frame


def write_media(path: Path, frames: int = 16, fps: float = 8.0, audio: bool = True, video: bool = True,
                pts=None, size: tuple[int, int] = (32, 48)) -> Path:
    """A small file in the container and codecs its extension implies (.mp4: H.264 + AAC,
    .avi: MPEG-4 + PCM, .webm/.mkv: VP9 + Opus, .wav: PCM). ``pts`` (milliseconds per
    frame index) makes a variable frame rate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    video = video and ext != ".wav"
    with av.open(str(path), "w") as container:
        audio_stream = None
        if audio:
            codec, rate, chunk = AUDIO_CODECS[ext]
            audio_stream = container.add_stream(codec, rate=rate)
            audio_stream.layout = "mono"
        if video:
            stream = container.add_stream(VIDEO_CODECS[ext], rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = size
            stream.pix_fmt = "yuv420p"
            if pts is not None:
                stream.codec_context.time_base = Fraction(1, 1000)
            for i in range(frames):
                image = np.full((*size, 3), (i * 37) % 255, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                if pts is not None:
                    frame.pts, frame.time_base = pts(i), Fraction(1, 1000)
                else:
                    frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        if audio_stream is not None:
            for frame in _audio_frames(codec, rate, chunk, frames / fps if video else 2.0):
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())
    return path


def vfr_pts(i: int) -> int:
    """Frame times alternating 125 ms and 250 ms apart."""
    return sum(250 if k % 2 else 125 for k in range(i))


def make_bad(kind: str, path: Path, good: Path) -> Path:
    """One bad file of ``kind`` at ``path`` (``good``: a valid VP9/WebM to start from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    if kind == "corrupt":  # a WebM signature followed by garbage
        rng = np.random.default_rng(0)
        path.write_bytes(data[:4] + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes() + data[2004:])
    elif kind == "truncated":
        path.write_bytes(data[: len(data) * 3 // 10])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":  # wrongly named: text in an .mp4
        path.write_text("this is a text file, not a video\n" * 20)
    elif kind == "directory":  # unreadable: tests run as root, so no permission bits
        path.mkdir()
    elif kind == "broken_link":
        path.symlink_to(path.parent / "nowhere.webm")
    elif kind == "no_audio":
        write_media(path, frames=32, audio=False)
    elif kind == "no_video":
        write_media(path, video=False)
    elif kind == "one_frame":
        write_media(path, frames=1)
    elif kind == "too_short":
        write_media(path, frames=4)
    elif kind == "vfr":
        write_media(path, frames=32, pts=vfr_pts)
    elif kind == "misnamed":  # a real WebM named .mp4: usable, with a warning
        shutil.copy(good, path)
    else:
        raise ValueError(kind)
    return path


BAD_KINDS = {  # kind -> (file name, reason the preparer gives)
    "corrupt": ("corrupt.webm", Reason.CORRUPT),
    "truncated": ("truncated.webm", Reason.TRUNCATED),
    "empty": ("empty.webm", Reason.EMPTY),
    "text": ("text.mp4", Reason.NOT_MEDIA),
    "directory": ("folder.mp4", Reason.UNREADABLE),
    "broken_link": ("link.webm", Reason.UNREADABLE),
    "no_audio": ("silent.webm", Reason.NO_AUDIO),
    "no_video": ("sound.webm", Reason.NO_VIDEO),
    "one_frame": ("still.webm", Reason.ONE_FRAME),
    "too_short": ("short.webm", Reason.TOO_SHORT),
    "vfr": ("vfr.webm", Reason.VFR),
}


def record_for(path: Path, template: dict, **changes) -> MediaRecord:
    """A manifest record for ``path`` that copies a good record's metadata (as a stale or
    hand-written manifest would), with the true size of the file."""
    data = {**template, "video": str(path), "id": path.stem, **changes}
    if os.path.isfile(path) and "video_bytes" not in changes:
        data["video_bytes"] = os.path.getsize(path)
    return MediaRecord.from_dict(data)


@pytest.fixture(scope="module")
def good_webm(tmp_path_factory) -> Path:
    return Path(write_good(tmp_path_factory.mktemp("good"), 1)[0]["video"])


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_probe_names_what_is_wrong(kind, good_webm, tmp_path):
    name, reason = BAD_KINDS[kind]
    path = make_bad(kind, tmp_path / name, good_webm)
    try:
        info = probe_media(str(path))
    except ProbeError as err:
        assert err.reason == reason, err
        return
    # Usable media whose problem is what it holds: the preparer's checks decide.
    assert reason in (Reason.NO_AUDIO, Reason.NO_VIDEO, Reason.ONE_FRAME, Reason.TOO_SHORT, Reason.VFR)
    problems = {Reason.NO_AUDIO: info.audio_codec is None, Reason.NO_VIDEO: info.video is None,
                Reason.ONE_FRAME: info.video and info.video.num_frames == 1,
                Reason.TOO_SHORT: info.video and info.video.duration < 1.0,
                Reason.VFR: info.video and info.video.vfr}
    assert problems[reason]


def test_probe_reads_a_good_file_and_flags_a_wrong_extension(good_webm, tmp_path):
    info = probe_media(str(good_webm))
    assert info.video.codec == "vp9" and info.video.num_frames == SPEC.num_frames
    assert info.video.fps == pytest.approx(SPEC.fps) and not info.video.vfr
    assert (info.video.width, info.video.height) == (64, 48)
    assert info.audio_codec is None  # the writer puts the sound in a FLAC beside the video
    misnamed = probe_media(str(make_bad("misnamed", tmp_path / "really_webm.mp4", good_webm)))
    assert any(flag.startswith("extension_mismatch") for flag in misnamed.flags)


def test_rgb_in_the_calling_thread_gives_pyav_default_colours(good_webm):
    reformatter = VideoReformatter()
    with av.open(str(good_webm)) as container:
        frames = list(container.decode(video=0))[:8]
    for frame in frames:
        converted = rgb(reformatter, frame)
        assert converted.shape == (48, 64, 3) and converted.dtype == np.uint8
        assert np.array_equal(converted, frame.to_ndarray(format="rgb24"))
    assert len({rgb(reformatter, f).tobytes() for f in frames}) > 1  # frames of a moving scene, not one cached


def _swresampled(path: Path, rate: int) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    return np.concatenate(chunks + [f.to_ndarray().reshape(-1) for f in resampler.resample(None)])


def test_decode_audio_gives_swresample_samples_for_prepared_and_other_flac(tmp_path):
    samples = (np.random.default_rng(0).standard_normal(16000) * 6000).clip(-32768, 32767).astype(np.int16)
    write_flac(samples, str(tmp_path / "prepared.flac"), 16000)
    got = decode_audio(str(tmp_path / "prepared.flac"), 16000)  # scaled only
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), _swresampled(tmp_path / "prepared.flac", 16000))
    assert np.array_equal(got.numpy(), samples / np.float32(32768))
    write_flac(samples, str(tmp_path / "8k.flac"), 8000)
    upsampled = decode_audio(str(tmp_path / "8k.flac"), 16000)  # resampled
    assert abs(len(upsampled) - 32000) < 64
    assert np.array_equal(upsampled.numpy(), _swresampled(tmp_path / "8k.flac", 16000))


@pytest.mark.parametrize("ext,codec", [(".mp4", "h264"), (".avi", "mpeg4"), (".mkv", "vp9")])
def test_written_containers_probe_as_their_codecs(ext, codec, tmp_path):
    info = probe_media(str(write_media(tmp_path / f"clip{ext}")))
    assert info.video.codec == codec and info.video.num_frames == 16 and info.audio_codec


def prepared_manifest(folder: Path, count: int, spec: SyntheticSpec = SPEC, workers: int = 0) -> Path:
    """``count`` synthetic videos (VP9 + Opus in WebM) in a ``generic`` tree, prepared
    into ``folder/manifest.jsonl`` as a user would."""
    from avbert.data.datasets import Generic
    from avbert.data.prepare import PrepareOptions, prepare_dataset

    for index in range(count):
        raw = generate_video(spec, index)
        raw.frames = widen(raw.frames)
        write_raw(raw, str(folder / "root" / "train" / f"class{raw.label}"), f"video_{index:02d}", "train",
                  mux_audio=True)
    for flac in (folder / "root").rglob("*.flac"):
        flac.unlink()  # the preparer extracts the audio track itself
    manifest = folder / "manifest.jsonl"
    prepare_dataset(Generic(folder / "root"), manifest, PrepareOptions(audio_dir=str(folder / "audio")),
                    workers=workers)
    return manifest


RUNTIME_BAD = {  # record kind -> skip reason the loaders count
    "missing": Reason.MISSING, "directory": Reason.UNREADABLE, "broken_link": Reason.UNREADABLE,
    "empty": Reason.EMPTY, "changed": Reason.CHANGED, "no_video": Reason.NO_VIDEO, "no_audio": Reason.NO_AUDIO,
    "one_frame": Reason.ONE_FRAME, "too_short": Reason.TOO_SHORT, "vfr": Reason.VFR,
    "corrupt": Reason.DECODE_ERROR, "truncated": Reason.DECODE_ERROR, "text": Reason.DECODE_ERROR,
    "lying": Reason.DECODE_ERROR, "bad_audio": Reason.DECODE_ERROR,
}


def _bad_record(kind: str, folder: Path, template: dict) -> MediaRecord:
    good = Path(template["video"])
    if kind == "missing":
        return record_for(folder / "gone.webm", template)
    if kind in ("changed", "no_video", "no_audio", "bad_audio"):
        record = record_for(good, template, id=kind)
        record.video_bytes += kind == "changed"
        record.video = None if kind == "no_video" else record.video
        record.audio = None if kind == "no_audio" else record.audio
        if kind == "bad_audio":
            record.audio = str(make_bad("text", folder / "noise.flac", good))
            record.audio_bytes = os.path.getsize(record.audio)
        return record
    name = {"lying": "lying.webm"}.get(kind) or BAD_KINDS[kind][0]
    path = make_bad("one_frame" if kind == "lying" else kind, folder / name, good)
    facts = {"one_frame": dict(num_frames=1), "too_short": dict(num_frames=4, duration=0.5), "vfr": dict(vfr=True)}
    return record_for(path, template, **facts.get(kind, {}))


def mixed_manifest(folder: Path, goods: list[MediaRecord]) -> tuple[Path, dict[str, int]]:
    """A manifest alternating good records and one record of every run-time problem
    (each bad record is followed by a good one), padded with good records to 32, and the
    skip counts a loader must report for one pass over it."""
    bad_folder = folder / "bad"
    bad_folder.mkdir(parents=True, exist_ok=True)
    template = {k: v for k, v in vars(goods[0]).items() if k != "index"}
    records = []
    for n, kind in enumerate(RUNTIME_BAD):
        records += [goods[n % len(goods)], _bad_record(kind, bad_folder, template)]
    records += [goods[n % len(goods)] for n in range(32 - len(records))]
    records = [dataclasses.replace(record, id=f"{n:02d}_{record.id}") for n, record in enumerate(records)]
    expected: dict[str, int] = {"skipped": len(RUNTIME_BAD)}
    for reason in RUNTIME_BAD.values():
        expected[f"skipped/{reason}"] = expected.get(f"skipped/{reason}", 0) + 1
    from avbert.data.manifest import write_manifest

    return write_manifest(records, folder / "mixed.jsonl", ["class0", "class1"]), expected


@pytest.mark.parametrize("ext,fps", [(".webm", 30.0), (".mp4", 30000 / 1001), (".webm", 25.0)])
def test_frame_rate_survives_millisecond_timestamps(ext, fps, tmp_path):
    info = probe_media(str(write_media(tmp_path / f"clip{ext}", frames=60, fps=fps)))
    assert info.video.fps == pytest.approx(fps, rel=1e-6) and not info.video.vfr
