"""The synthetic audio-visual dataset, the log-mel definition and the media writer."""

import av
import numpy as np
import pytest
import torch
import torchaudio

from avbert.data.audio import (LogMel, SILENCE_DB, clip_logmel, clip_windows, normalize_logmel,
                               spec_augment)
from avbert.data.synthetic import (CACHE_MIN_VIDEOS, SyntheticAVDataset, SyntheticSpec, alignment_probe,
                                   class_chains, generate_video, write_media, write_raw)

SPEC = SyntheticSpec()


@pytest.fixture(scope="module")
def dataset():
    return SyntheticAVDataset(SPEC)


def test_generation_is_deterministic_by_seed_and_index():
    a, b = generate_video(SPEC, 7), generate_video(SPEC, 7)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.waveform, b.waveform)
    other = generate_video(SyntheticSpec(seed=1), 7)
    assert not np.array_equal(a.frames, other.frames)
    assert not np.array_equal(a.frames, generate_video(SPEC, 8).frames)


def test_item_does_not_depend_on_which_videos_are_loaded(dataset):
    subset = SyntheticAVDataset(SPEC, indices=[7, 3])
    for key in ("video", "audio", "label", "index"):
        assert torch.equal(subset[0][key], dataset[7][key])


def test_large_splits_are_generated_once_then_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("AVBERT_CACHE_DIR", str(tmp_path))
    spec = SyntheticSpec(num_videos=CACHE_MIN_VIDEOS, holdout_every=CACHE_MIN_VIDEOS + 1)
    first = SyntheticAVDataset(spec, split="train")
    stored = list((tmp_path / "synthetic").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".pt"
    video, audio, labels, events = torch.load(stored[0], weights_only=True)
    assert torch.equal(video, first.video) and torch.equal(audio, first.audio)
    torch.save([video, audio, labels + 100, events], stored[0])  # marked: a load must return the mark
    assert torch.equal(SyntheticAVDataset(spec, split="train").labels, first.labels + 100)

    # Another world is another file; a damaged file is regenerated, not trusted.
    SyntheticAVDataset(SyntheticSpec(num_videos=CACHE_MIN_VIDEOS, holdout_every=CACHE_MIN_VIDEOS + 1, seed=1),
                       split="train")
    assert len(list((tmp_path / "synthetic").iterdir())) == 2
    stored[0].write_bytes(b"not a tensor file")
    assert torch.equal(SyntheticAVDataset(spec, split="train").labels, first.labels)

    monkeypatch.setenv("AVBERT_CACHE_DIR", "off")  # nothing read, nothing written
    torch.save([video, audio, labels + 100, events], stored[0])
    assert torch.equal(SyntheticAVDataset(spec, split="train").labels, first.labels)


def test_item_shapes_and_dtypes(dataset):
    item = dataset[0]
    t, f, s = SPEC.clips, SPEC.frames_per_clip, SPEC.frame_size
    assert item["video"].shape == (t, 3, f, s, s) and item["video"].dtype == torch.uint8
    assert item["audio"].shape == (t, 1, SPEC.n_mels, SPEC.mel_frames)
    assert item["audio"].dtype == torch.float32
    assert item["valid"].dtype == torch.bool and bool(item["valid"].all())
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 0
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["video"].shape == (5, t, 3, f, s, s)


def test_inputs_are_order_one(dataset):
    from avbert.models.cnn import normalize_pixels

    video = normalize_pixels(torch.stack([dataset[i]["video"] for i in range(16)]))  # what the model sees
    assert video.abs().mean() < 3 and dataset.audio.abs().mean() < 3
    assert dataset.audio.std() > 0.1


def test_splits_partition_the_videos():
    train, val = SPEC.indices("train"), SPEC.indices("val")
    assert sorted(train + val) == list(range(SPEC.num_videos))
    assert len(val) == SPEC.num_videos // SPEC.holdout_every


def test_labels_are_balanced(dataset):
    counts = torch.bincount(dataset.labels, minlength=SPEC.num_classes).float()
    expected = SPEC.num_videos / SPEC.num_classes
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected


def test_label_needs_temporal_context_not_one_clip(dataset):
    chains = torch.from_numpy(class_chains(SPEC))
    assert all(len(set(row.tolist())) == SPEC.num_events for row in chains)
    assert all(len(set(col.tolist())) == SPEC.num_classes for col in chains.T)
    events = dataset.events
    # Vote over transitions: each clean transition e -> e' names exactly one class.
    hits = chains[:, events[:, :-1]] == events[None, :, 1:]
    from_context = hits.sum(-1).argmax(0)
    assert (from_context == dataset.labels).float().mean() > 0.85
    # One clip alone: its event is uniform whatever the class.
    joint = torch.zeros(SPEC.num_classes, SPEC.num_events)
    joint.index_put_((dataset.labels, events[:, 0]), torch.ones(len(events)), accumulate=True)
    from_one_clip = joint.argmax(0)[events[:, 0]]
    assert (from_one_clip == dataset.labels).float().mean() < 0.3


def _nearest_centroid_accuracy(features, labels, train):
    centroids = torch.stack([features[train & (labels == k)].mean(0)
                             for k in range(SPEC.num_events)])
    predicted = torch.cdist(features[~train], centroids).argmin(1)
    return (predicted == labels[~train]).float().mean().item(), predicted


def _object_colour(video):
    """Per-clip mean colour of the most saturated pixels: ``[N, T, 3]``."""
    pixels = video.permute(0, 1, 3, 4, 5, 2).flatten(2, 4)  # [N, T, P, 3]
    saturation = pixels.amax(-1) - pixels.amin(-1)
    top = saturation.topk(pixels.shape[2] // 20, dim=-1).indices
    return torch.gather(pixels, 2, top[..., None].expand(-1, -1, -1, 3)).mean(2)


def test_event_is_visible_and_audible_in_the_same_clip(dataset):
    video = dataset.video.float()
    colour = _object_colour(video).flatten(0, 1)
    spectrum = dataset.audio.mean(-1).flatten(0, 1).flatten(1)
    events = dataset.events.flatten()
    train = torch.tensor([SPEC.split_of(i) == "train" for i in dataset.indices])
    train = train.repeat_interleave(SPEC.clips)
    seen, from_video = _nearest_centroid_accuracy(colour, events, train)
    heard, from_audio = _nearest_centroid_accuracy(spectrum, events, train)
    assert seen > 0.9 and heard > 0.9  # chance is 1 / num_events
    assert (from_video == from_audio).float().mean() > 0.85


def test_media_round_trip(tmp_path):
    records = write_media(SPEC, str(tmp_path), indices=[0, 4], mux_audio=True)
    assert [r["split"] for r in records] == ["train", "val"]
    for record in records:
        raw = generate_video(SPEC, record["index"])
        assert record["label"] == raw.label and record["codec"] == "vp9"
        with av.open(record["video"]) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "vp9"
            assert float(stream.average_rate) == record["fps"] == SPEC.fps
            assert [s.type for s in container.streams] == ["video", "audio"]
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert frames.shape == (record["num_frames"], SPEC.frame_size, SPEC.frame_size, 3)
        assert np.abs(frames.astype(float) - raw.frames).mean() < 15
        with av.open(record["audio"]) as container:
            audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], -1)
            rate = container.streams.audio[0].rate
        assert rate == SPEC.sample_rate
        assert audio.shape[-1] / rate == pytest.approx(record["duration"])
        assert np.abs(audio[0] / 32767 - raw.waveform).max() < 1e-4


def test_alignment_probe_puts_flash_and_click_in_the_same_clip(tmp_path):
    flash = 2 * SPEC.clip_duration + 0.3 * SPEC.clip_duration
    probe = alignment_probe(SPEC, flash)
    brightness = probe.frames.reshape(SPEC.clips, -1).mean(1)
    patches = clip_logmel(torch.from_numpy(probe.waveform), SPEC.logmel(), SPEC.clip_starts(),
                          SPEC.clip_duration, SPEC.mel_frames)
    loudness = patches.mean((1, 2, 3))
    assert brightness.argmax() == loudness.argmax() == 2
    record = write_raw(probe, str(tmp_path), "probe", "probe")
    assert record["num_frames"] == SPEC.num_frames and record["label"] == -1


def test_logmel_is_torchaudio_power_mel_in_decibels():
    wave = torch.randn(2, 16000) * 0.1
    logmel = LogMel(16000, n_fft=400, hop_length=160, n_mels=80)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    reference = torchaudio.transforms.AmplitudeToDB("power", top_db=None)(mel(wave))
    assert torch.allclose(logmel(wave), reference, atol=1e-4)
    assert logmel(wave).shape == (2, 80, logmel.num_frames(16000)) == (2, 80, 101)
    assert logmel(torch.zeros(400)).min() == SILENCE_DB


def test_clip_windows_are_the_clips_samples_with_silence_outside_the_recording():
    wave = torch.arange(1, 2 * 50 + 1, dtype=torch.float32).reshape(2, 50)  # two recordings of 50 samples
    windows = clip_windows(wave, 10, [-0.2, 1.0, 4.5], 1.0)  # 10 samples a clip at 10 Hz
    assert windows.shape == (2, 3, 10)
    assert torch.equal(windows[0, 0], torch.tensor([0.0, 0.0] + list(range(1, 9)), dtype=torch.float32))
    assert torch.equal(windows[1, 1], wave[1, 10:20])
    assert torch.equal(windows[0, 2], torch.tensor(list(range(46, 51)) + [0.0] * 5, dtype=torch.float32))


def test_clip_logmel_crops_and_pads_to_mel_frames():
    logmel = SPEC.logmel()
    wave = torch.randn(3, SPEC.clip_samples * SPEC.clips) * 0.1
    patches = clip_logmel(wave, logmel, SPEC.clip_starts(), SPEC.clip_duration, SPEC.mel_frames)
    assert patches.shape == (3, SPEC.clips, 1, SPEC.n_mels, SPEC.mel_frames)
    short = clip_logmel(wave[0, :1000], logmel, [0.0], SPEC.clip_duration, 64, normalize=False)
    assert short.shape == (1, 1, SPEC.n_mels, 64)
    assert (short[..., -1] == SILENCE_DB).all()  # past the recording: silence
    assert torch.equal(normalize_logmel(torch.tensor(-20.0)), torch.tensor(0.0))


def test_spec_augment_masks_small_bands_deterministically(dataset):
    patches = dataset.audio[:8]
    first = spec_augment(patches, torch.Generator().manual_seed(0))
    again = spec_augment(patches, torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and not torch.equal(first, patches)
    masked = (first == 0) & (patches != 0)
    rows = masked.all(-1).sum(-1)  # masked mel bins per patch
    cols = masked.all(-2).sum(-1)  # masked frames per patch
    assert rows.max() <= round(0.05 * SPEC.n_mels) and cols.max() <= round(0.05 * SPEC.mel_frames)
    assert masked.float().mean() < 0.15
