"""The manifest format and the clip arithmetic both loaders share."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from avbert.config import config_from_dict
from avbert.data.clips import (ClipSpec, TooShort, eval_crops, eval_plans, plan_sample, resized_size,
                               sequence_layout, train_crop, train_plan)
from avbert.data.manifest import (MediaRecord, MissingMediaError, classes_path, load_manifest,
                                  write_manifest)


def _record(tmp_path, name, **fields):
    video, audio = tmp_path / f"{name}.webm", tmp_path / f"{name}.flac"
    video.write_bytes(b"v")
    audio.write_bytes(b"a")
    base = dict(id=name, video=str(video), audio=str(audio), splits=["train"], duration=4.0, label=0,
                fps=8.0, num_frames=32, codec="vp9", width=64, height=48, sample_rate=16000)
    return MediaRecord(**{**base, **fields})


def test_round_trip_keeps_every_field_and_the_classes(tmp_path):
    records = [_record(tmp_path, "a"), _record(tmp_path, "b", labels=[0, 2], label=None, splits=["test1", "train2"])]
    path = write_manifest(records, tmp_path / "m.jsonl", classes=["x", "y", "z"])
    loaded = load_manifest(path)
    assert [r.index for r in loaded.records] == [0, 1]
    for before, after in zip(records, loaded.records):
        assert before == after
    assert loaded.classes == ["x", "y", "z"] and classes_path(path).name == "m.classes.txt"
    assert loaded.multilabel and loaded.codecs == {"vp9"}
    assert [r.id for r in loaded.split("train2").records] == ["b"]
    with pytest.raises(ValueError, match="no record in split 'val'"):
        loaded.split("val")


def test_one_json_object_per_line_with_relative_paths(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "v.webm").write_bytes(b"v")
    (tmp_path / "media" / "v.flac").write_bytes(b"a")
    line = {"video": "media/v.webm", "audio": "media/v.flac", "split": "train", "duration": 1.0, "label": 3}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    loaded = load_manifest(tmp_path / "m.jsonl")
    assert loaded.records[0].video == str(tmp_path / "media" / "v.webm")
    assert loaded.records[0].splits == ["train"] and loaded.num_classes == 4


def test_missing_files_are_refused_with_count_and_first_paths(tmp_path):
    records = [_record(tmp_path, f"r{i}") for i in range(8)]
    for record in records[1:8]:
        (tmp_path / f"{record.id}.webm").unlink()
    path = write_manifest(records, tmp_path / "m.jsonl")
    with pytest.raises(MissingMediaError) as err:
        load_manifest(path)
    message = str(err.value)
    assert "7 file(s)" in message and "r1.webm" in message and "and 2 more" in message
    assert "r7.webm" not in message
    assert len(load_manifest(path, check=False).records) == 8


SPEC = ClipSpec(clips=4, clip_seconds=1.0, frames_per_clip=4, frame_stride=2, crop_size=32,
                short_side=(36, 44), mel_frames=32, hop_length=256, n_fft=512, test_views=3, test_crops=3)


def _video(num_frames, fps=8.0, width=64, height=48, index=0):
    return MediaRecord(id="v", video="v", audio="a", splits=["train"], duration=num_frames / fps, fps=fps,
                       num_frames=num_frames, width=width, height=height, index=index)


def test_clips_divide_the_whole_file_evenly_when_the_record_has_no_window():
    plan = train_plan(SPEC, _video(64), np.random.default_rng(0))  # 8 s, 4 clips: one 2 s slot each
    starts = plan.frames[:, 0]
    assert np.all(np.diff(starts) == 16) and plan.valid.all()
    assert np.all(np.diff(plan.frames, axis=1) == SPEC.frame_stride) and plan.frames.max() < 64
    assert np.allclose(plan.starts, starts / 8.0) and plan.window_seconds == pytest.approx(1.0)


def test_clips_are_never_closer_than_clip_seconds():
    layout = sequence_layout(SPEC, _video(31))  # 31 / 4 frames per slot, but 1 s (8 frames) apart still fits
    assert layout.step == 8 and layout.valid == 4 and layout.slack == 0 and layout.clip == 7


def test_short_videos_keep_the_clips_that_fit_and_mark_the_rest_invalid():
    layout = sequence_layout(SPEC, _video(20))  # 13 frames of room: 2 clips 8 apart
    assert layout.step == 8 and layout.valid == 2 and layout.slack == 5
    plan = train_plan(SPEC, _video(20), np.random.default_rng(0))
    assert plan.valid.tolist() == [True, True, False, False]
    assert np.array_equal(plan.frames[2], plan.frames[1]) and plan.frames.max() < 20
    assert plan.frames[1, 0] - plan.frames[0, 0] == 8
    with pytest.raises(TooShort):
        sequence_layout(SPEC, _video(6))


def test_test_views_cover_the_video_evenly():
    plans = eval_plans(SPEC, _video(80))
    firsts = [p.frames[0, 0] for p in plans]
    assert firsts[0] == 0 and firsts[-1] + 3 * 20 + 6 == 79 and len(plans) == 3


def test_crops_stay_inside_the_frame():
    rng = np.random.default_rng(1)
    for _ in range(50):
        crop = train_crop(SPEC, 48, 64, rng)
        assert 36 <= min(crop.height, crop.width) <= 44
        assert 0 <= crop.top <= crop.height - 32 and 0 <= crop.left <= crop.width - 32
    crops = eval_crops(SPEC, 48, 64)
    assert (crops[0].height, crops[0].width) == resized_size(48, 64, 32) == (32, 43)
    assert [c.left for c in crops] == [0, 6, 11] and all(c.top == 0 for c in crops)
    portrait = eval_crops(SPEC, 64, 48)
    assert [c.top for c in portrait] == [0, 6, 11] and all(c.left == 0 for c in portrait)


def test_flip_false_keeps_every_training_crop_unmirrored_and_the_other_draws():
    unflipped = replace(SPEC, flip=False)
    crops = [train_crop(SPEC, 48, 64, np.random.default_rng(seed)) for seed in range(64)]
    kept = [train_crop(unflipped, 48, 64, np.random.default_rng(seed)) for seed in range(64)]
    assert 16 <= sum(c.flip for c in crops) <= 48 and not any(c.flip for c in kept)
    assert [replace(c, flip=False) for c in crops] == kept
    data = config_from_dict({}, None, ["data.preset=tiny", "data.flip=false"]).data
    assert ClipSpec.from_config(data).flip is False and ClipSpec.from_config(replace(data, flip=True)).flip


def test_augmentation_depends_on_seed_epoch_and_index_only():
    record = _video(64, index=5)
    a, b = plan_sample(SPEC, record, True, 0, 3), plan_sample(SPEC, record, True, 0, 3)
    assert a.views[0][1] == b.views[0][1] and a.mask_seed == b.mask_seed
    assert np.array_equal(a.views[0][0].frames, b.views[0][0].frames)
    others = [plan_sample(SPEC, record, True, 0, epoch).mask_seed for epoch in range(4, 8)]
    assert a.mask_seed not in others
    test = plan_sample(SPEC, record, False, 0, 0)
    assert len(test.views) == 9 and test.mask_seed is None


def test_audio_only_records_use_log_mel_patch_windows():
    record = MediaRecord(id="a", video=None, audio="a", splits=["train"], duration=5.0)
    plan = train_plan(SPEC, record, np.random.default_rng(0))
    assert plan.window_seconds == pytest.approx(32 * 256 / 16000) and plan.valid.all()
    assert plan.starts[-1] + plan.window_seconds <= 5.0 + 1e-6
