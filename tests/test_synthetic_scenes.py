"""The scenes world (avbert.data.synthetic_scenes): events cause both modalities, every
nuisance is drawn per clip and per modality, and its .mp4 tree prepares as a dataset.

Events are measured from the media, not read from the generator: the grating's
orientation from the power spectrum of a clip's frames, the noise band from the
spectrum of a clip's waveform."""

from __future__ import annotations

import runpy
from pathlib import Path

import av
import numpy as np
import pytest

from avbert.data.datasets import Generic
from avbert.data.manifest import load_manifest
from avbert.data.prepare import PrepareOptions, prepare_dataset
from avbert.data.synthetic_scenes import (ScenesSpec, class_steps, event_bands, event_drifts,
                                          event_orientations, generate_scene, scene_events,
                                          write_generic_tree, write_mp4)

SPEC = ScenesSpec(num_videos=100)


@pytest.fixture(scope="module")
def raws():
    return [generate_scene(SPEC, i) for i in range(SPEC.num_videos)]


def clips_of(array: np.ndarray, clips: int) -> np.ndarray:
    return array.reshape(clips, -1, *array.shape[1:])


def frame_spectra(frames: np.ndarray):
    """Hann-windowed 2-D spectra ``[F, H, W]`` of ``[F, H, W, 3]`` frames (grey, mean
    removed), the frequency of each bin in cycles per frame (``fx``, ``fy``), and the
    ring of 3..8 cycles per frame where the grating lies."""
    grey = frames.astype(np.float64).mean(-1)
    size = grey.shape[-1]
    window = np.outer(np.hanning(size), np.hanning(size))
    spectra = np.fft.fft2((grey - grey.mean(axis=(1, 2), keepdims=True)) * window)
    fy, fx = np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size, indexing="ij")
    return spectra, fx, fy, (np.hypot(fx, fy) >= 3) & (np.hypot(fx, fy) <= 8)


def grating_angle(frames: np.ndarray) -> float:
    """Wave-vector angle (radians, mod pi) of the stripes in ``[F, H, W, 3]`` frames:
    the power-weighted mean doubled angle of the spectrum's ring."""
    spectra, fx, fy, ring = frame_spectra(frames)
    power = (np.abs(spectra) ** 2).mean(0)
    z = np.sum(power[ring] * np.exp(2j * np.arctan2(fy, fx)[ring]))
    return float(np.angle(z) / 2 % np.pi)


def grating_drift(frames: np.ndarray, angle: float, fps: float) -> float:
    """Drift in cycles per second along the wave vector at ``angle``: the phase step
    between frames at the strongest bin of the ring on that side of the spectrum."""
    spectra, fx, fy, ring = frame_spectra(frames)
    side = ring & (fx * np.cos(angle) + fy * np.sin(angle) > 0)
    peak = np.unravel_index(np.argmax(np.where(side, (np.abs(spectra) ** 2).mean(0), 0)), side.shape)
    series = spectra[:, peak[0], peak[1]]
    step = np.angle(np.sum(series[1:] * np.conj(series[:-1])))
    return float(-step * fps / (2 * np.pi))


def nearest_orientation(angle: float, num_events: int) -> int:
    gap = (angle - event_orientations(num_events) + np.pi / 2) % np.pi - np.pi / 2
    return int(np.argmin(np.abs(gap)))


def dominant_band(wave: np.ndarray, spec: ScenesSpec) -> int:
    """The event whose band (+-1/6 octave around its centre) has the most power per Hz."""
    power = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / spec.sample_rate)
    density = [power[np.abs(np.log2(np.maximum(freqs, 1) / c)) < 1 / 6].mean() for c in event_bands(spec)]
    return int(np.argmax(density))


def picture_events(frames: np.ndarray, spec: ScenesSpec) -> list[int]:
    return [nearest_orientation(grating_angle(clip), spec.num_events) for clip in clips_of(frames, spec.clips)]


def sound_events(wave: np.ndarray, spec: ScenesSpec) -> list[int]:
    return [dominant_band(clip, spec) for clip in clips_of(wave[: spec.clips * spec.clip_samples], spec.clips)]


def test_generation_is_deterministic_by_seed_and_index(raws):
    again = generate_scene(SPEC, 7)
    assert np.array_equal(again.frames, raws[7].frames) and np.array_equal(again.waveform, raws[7].waveform)
    assert again.label == raws[7].label and np.array_equal(again.events, raws[7].events)
    assert not np.array_equal(generate_scene(ScenesSpec(seed=1), 7).frames, raws[7].frames)
    assert not np.array_equal(raws[8].frames, raws[7].frames)
    assert not np.array_equal(raws[8].waveform, raws[7].waveform)


def test_shapes_and_ranges(raws):
    raw = raws[0]
    assert raw.frames.shape == (16, 40, 40, 3) and raw.frames.dtype == np.uint8
    assert raw.waveform.shape == (32000,) and raw.waveform.dtype == np.float32
    assert np.abs(raw.waveform).max() <= 1.0 and raw.fps == 8.0 and raw.sample_rate == 16000
    assert SPEC.duration == 2.0 and SPEC.clip_samples == 8000


def test_splits_hold_out_every_fifth_video():
    assert [SPEC.split_of(i) for i in range(10)] == ["train"] * 4 + ["val"] + ["train"] * 4 + ["val"]
    assert sorted(SPEC.indices("train") + SPEC.indices("val")) == list(range(SPEC.num_videos))
    assert len(SPEC.indices("val")) == SPEC.num_videos // 5


def test_spec_validation_says_what_is_wrong():
    with pytest.raises(ValueError, match="num_classes is 6.*num_events - 1"):
        ScenesSpec(num_classes=6, num_events=6)
    with pytest.raises(ValueError, match="frame_size is 41"):
        ScenesSpec(frame_size=41)
    with pytest.raises(ValueError, match="event_noise"):
        ScenesSpec(event_noise=1.5)
    with pytest.raises(ValueError, match="Nyquist"):
        ScenesSpec(band_hz=(400.0, 7900.0))


def test_events_follow_the_class_step_when_clean():
    spec = ScenesSpec(event_noise=0.0)
    steps = class_steps(spec)
    assert len(set(steps.tolist())) == spec.num_classes and 0 not in steps
    for index in range(50):
        label, events = scene_events(spec, index)
        assert np.array_equal(np.diff(events) % spec.num_events, [steps[label]] * (spec.clips - 1))


def test_each_clip_event_is_uniform_whatever_the_class():
    """The class is only readable from consecutive clips: per class, the events (first
    and later clips alike) are close to uniform, and so are the labels."""
    table = [scene_events(SPEC, i) for i in range(2400)]
    labels = np.array([label for label, _ in table])
    events = np.array([events for _, events in table])
    assert np.abs(np.bincount(labels, minlength=SPEC.num_classes) / len(labels) - 1 / SPEC.num_classes).max() < 0.03
    for c in range(SPEC.num_classes):
        for t in (0, 1, 3):
            share = np.bincount(events[labels == c, t], minlength=SPEC.num_events) / (labels == c).sum()
            assert np.abs(share - 1 / SPEC.num_events).max() < 0.05, (c, t, share)


def test_noisy_events_leave_the_chain_at_the_configured_rate():
    steps = class_steps(SPEC)
    table = [scene_events(SPEC, i) for i in range(1000)]
    off = np.mean([(b - a) % SPEC.num_events != steps[label] for label, ev in table for a, b in zip(ev, ev[1:])])
    assert abs(off - SPEC.event_noise * (1 - 1 / SPEC.num_events)) < 0.03  # a uniform draw may land on the chain


def test_each_clip_event_sets_the_orientation_and_the_noise_band(raws):
    seen = set()
    for raw in raws[:40]:
        assert picture_events(raw.frames, SPEC) == raw.events.tolist(), raw.index
        assert sound_events(raw.waveform, SPEC) == raw.events.tolist(), raw.index
        seen |= set(raw.events.tolist())
    assert seen == set(range(SPEC.num_events))


def test_each_clip_event_sets_the_drift(raws):
    for raw in raws[:40]:
        for clip, event in zip(clips_of(raw.frames, SPEC.clips), raw.events):
            drift = grating_drift(clip, event_orientations(SPEC.num_events)[event], SPEC.fps)
            assert abs(drift - event_drifts(SPEC.num_events)[event]) < 0.3, (raw.index, event, drift)


@pytest.mark.parametrize("num_events", [2, 3, 5, 6, 8])
def test_a_mirrored_clip_still_shows_its_event(num_events):
    """A horizontal flip maps orientation theta to 180 - theta (reversing the wave
    vector, hence the drift sign, at theta = 0): no event may then look like another."""
    angles = np.round(np.degrees(event_orientations(num_events)), 6)
    drifts = event_drifts(num_events)
    signatures = set(zip(angles, drifts))
    for angle, drift in zip(angles, drifts):
        mirrored = ((180 - angle) % 180, -drift if angle == 0 else drift)
        assert mirrored == (angle, drift) or mirrored not in signatures, (angle, drift)


def _clip_nuisance(raws) -> tuple[np.ndarray, np.ndarray]:
    """``[V, T]`` mean brightness of each clip's picture and log RMS of its sound."""
    brightness = np.array([clips_of(r.frames.astype(np.float64), SPEC.clips).mean(axis=(1, 2, 3, 4)) for r in raws])
    loudness = np.array([np.log(np.sqrt((clips_of(r.waveform.astype(np.float64), SPEC.clips) ** 2).mean(1)))
                         for r in raws])
    return brightness, loudness


def test_nuisance_is_drawn_per_clip_not_per_video(raws):
    """Clips of one video share no nuisance: consecutive clips' brightness and loudness
    are uncorrelated across videos (world 1 draws them per video: correlation near 1)."""
    brightness, loudness = _clip_nuisance(raws)
    assert brightness.std() > 5 and loudness.std() > 0.2  # the nuisance does vary (0..255; log)
    for feature in (brightness, loudness):
        r = np.corrcoef(feature[:, :-1].ravel(), feature[:, 1:].ravel())[0, 1]
        assert abs(r) < 0.2, r
    assert len(set(np.round(brightness[0], 1))) == SPEC.clips and len(set(np.round(loudness[0], 2))) == SPEC.clips


def test_same_event_in_one_video_looks_and_sounds_different():
    """Two clips of one video showing the same event differ in colour and loudness as
    much as clips of different videos do (typically: tens of grey levels, ~0.4 in log
    RMS); a per-video nuisance would leave only the pixel and noise draws to differ."""
    spec = ScenesSpec(event_noise=1.0)  # events uniform: some videos repeat one
    colour_gaps, loudness_gaps = [], []
    for index in range(60):
        raw = generate_scene(spec, index)
        colour = clips_of(raw.frames.astype(np.float64), spec.clips).mean(axis=(1, 2, 3))  # [T, 3]
        _, loudness = _clip_nuisance([raw])
        for a in range(spec.clips):
            for b in range(a + 1, spec.clips):
                if raw.events[a] == raw.events[b]:
                    colour_gaps.append(np.linalg.norm(colour[a] - colour[b]))
                    loudness_gaps.append(abs(loudness[0, a] - loudness[0, b]))
    assert len(colour_gaps) >= 10
    assert np.median(colour_gaps) > 15 and min(colour_gaps) > 2, colour_gaps
    assert np.median(loudness_gaps) > 0.15, loudness_gaps


def test_picture_and_sound_nuisance_are_independent(raws):
    """Within a clip, nothing but the event ties picture to sound: its brightness and
    loudness are uncorrelated over many clips."""
    brightness, loudness = _clip_nuisance(raws)
    r = np.corrcoef(brightness.ravel(), loudness.ravel())[0, 1]
    assert abs(r) < 0.15, r


def test_written_mp4_decodes_to_the_frames_on_the_fps_grid_and_the_sound(raws, tmp_path):
    raw = raws[3]
    path = write_mp4(raw, tmp_path / "x.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4"]  # no temporary file left
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = [(float(f.time), f.to_ndarray().reshape(-1)) for f in container.decode(audio=0)]
    assert [t for t, _ in decoded] == [k / raw.fps for k in range(len(raw.frames))]
    frames = np.stack([f for _, f in decoded])
    assert np.abs(frames.astype(float) - raw.frames).mean() < 12
    assert picture_events(frames, SPEC) == raw.events.tolist()
    assert audio[0][0] == 0.0  # AAC priming is trimmed by the decoder: sample 0 is time 0
    wave = np.concatenate([a for _, a in audio])
    assert 2.0 <= len(wave) / raw.sample_rate <= 2.07  # AAC pads the last frame (2.048 s)
    reference = raw.waveform.astype(np.float64)
    lag = np.argmax(np.correlate(wave[:4000], reference[200:3800])) - 200
    assert lag == 0
    assert sound_events(wave, SPEC) == raw.events.tolist()


def test_generic_tree_prepares_every_file_with_its_label_and_split(tmp_path):
    spec = ScenesSpec(num_videos=10)
    paths = write_generic_tree(spec, tmp_path / "root")
    raws = [generate_scene(spec, i) for i in range(spec.num_videos)]
    assert [p.relative_to(tmp_path / "root").as_posix() for p in paths] == [
        f"{spec.split_of(i)}/class{raw.label}/scene_{i:05d}.mp4" for i, raw in enumerate(raws)]
    report = prepare_dataset(Generic(tmp_path / "root"), tmp_path / "m.jsonl",
                             PrepareOptions(audio_dir=str(tmp_path / "audio")), workers=0)
    assert report["kept"] == report["total"] == 10 and not report["warnings"], report
    manifest = load_manifest(tmp_path / "m.jsonl")
    records = {r.id: r for r in manifest.records}
    for i, raw in enumerate(raws):
        record = records[f"{spec.split_of(i)}/class{raw.label}/scene_{i:05d}"]
        assert manifest.classes[record.label] == f"class{raw.label}" and record.splits == [spec.split_of(i)]
        assert abs(record.duration - 2.0) < 0.01 and record.num_frames == 16 and record.fps == 8.0
        assert (record.codec, record.width, record.height) == ("h264", 40, 40)
    with av.open(records[f"train/class{raws[0].label}/scene_00000"].audio) as container:
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]) / 32768.0
    assert 2.0 <= len(wave) / 16000 <= 2.07 and sound_events(wave, spec) == raws[0].events.tolist()


def test_command_line_writes_the_tree_and_refuses_a_used_folder(tmp_path, capsys):
    tool = runpy.run_path(str(Path(__file__).parents[1] / "tools" / "make_scenes.py"), run_name="cli_test")
    root = tmp_path / "scenes"
    assert tool["main"]([str(root), "--num-videos", "5", "--seed", "3"]) == 0
    spec = ScenesSpec(num_videos=5, seed=3)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4"))
    expected = sorted(f"{spec.split_of(i)}/class{scene_events(spec, i)[0]}/scene_{i:05d}.mp4" for i in range(5))
    assert written == expected and "wrote 5 videos (4 train, 1 val)" in " ".join(capsys.readouterr().err.split())
    assert tool["main"]([str(root), "--num-videos", "5"]) == 2
    assert "not an empty folder" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
