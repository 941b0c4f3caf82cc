"""Videos longer than their clips: a window per record, clips spread over it without
overlap, and short videos padded or skipped (``data.short_videos``), counted by the
preparer's report, the loaders and metrics.jsonl. Real media, written with PyAV."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from runpy import run_path

import numpy as np
import pytest
import torch

from avbert.data import pyav_loader
from avbert.data.clips import ClipSpec, ShortVideo, plan_sample, sequence_layout
from avbert.data.dali_loader import DaliLoader
from avbert.data.datasets import AnnotationError, Kinetics700
from avbert.data.manifest import load_manifest, write_manifest
from avbert.data.prepare import record_window
from avbert.data.probe import ProbeError, Reason
from avbert.data.pyav_loader import ManifestDataset, PyAVLoader
from test_data_media import write_media

ROOT = Path(__file__).resolve().parents[1]
FPS = 8.0
SPEC = ClipSpec(clips=4, clip_seconds=1.0, frames_per_clip=4, frame_stride=2, crop_size=24, short_side=(28, 32),
                n_mels=32, mel_frames=16, hop_length=256, n_fft=512, test_views=2, test_crops=1)
"""4 clips of 4 frames at stride 2 (7 frames, 0.875 s at 8 fps), at least 1 s apart: a
window of 4 s holds the 4 clips, one per 1 s slot."""
CLIP = SPEC.window_frames
ANNOTATIONS = """label,youtube_id,time_start,time_end,split
abseiling,longcentre,5,7,train
abseiling,longend,10,12,train
tapping pen,shortclip,2,5,train
tapping pen,neverdownloaded,0,10,train
"""
"""Two untrimmed 12 s source videos (segments mid-file and at its end), one 3 s segment
file, one video that is not on disk."""


def prepare_kinetics(folder: Path, *extra: str) -> tuple[int, Path]:
    """The kinetics700 tree above, prepared by the command line for 4 clips 1 s apart
    (so 4 s windows); the exit code and the manifest."""
    root = folder / "k700"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.csv").write_text(ANNOTATIONS)
    write_media(root / "videos" / "longcentre.webm", frames=96, fps=FPS)
    write_media(root / "videos" / "longend.webm", frames=96, fps=FPS)
    write_media(root / "videos" / "shortclip_000002_000005.webm", frames=24, fps=FPS)
    tool = run_path(str(ROOT / "tools" / "prepare_data.py"), run_name="cli_test")
    out = folder / "k700.jsonl"
    code = tool["main"](["kinetics700", "--root", str(root), "--out", str(out), "--workers", "0",
                         "--clips", "4", "--clip-seconds", "1", "--frames-per-clip", "4", "--frame-stride", "2",
                         *extra])
    return code, out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    code, out = prepare_kinetics(tmp_path_factory.mktemp("long"))
    assert code == 0
    return out


def _records(manifest_path: Path) -> dict:
    return {r.id.split("_")[0]: r for r in load_manifest(manifest_path).records}


# -- the preparer ---------------------------------------------------------------------
def test_kinetics_preparer_writes_a_window_around_each_annotated_segment(prepared):
    records = _records(prepared)
    assert set(records) == {"longcentre", "longend", "shortclip"}
    assert records["longcentre"].window == [4.0, 8.0]  # 4 s centred on the 5-7 s segment
    assert records["longend"].window == [8.0, 12.0]  # centred on 11 s, moved inside the 12 s file
    assert records["shortclip"].window == [0.0, 3.0]  # a 3 s segment file is its own window
    assert records["longcentre"].duration == pytest.approx(12.0) and records["shortclip"].duration == pytest.approx(3.0)


def test_the_preparer_report_counts_short_videos_and_missing_ones(prepared, capsys):
    report = json.loads(prepared.with_name("k700.report.json").read_text())
    assert report["kept"] == 3 and report["skipped_by_reason"] == {"missing": 1}
    short = report["short_videos"]
    assert (short["count"], short["clips"], short["clip_seconds"]) == (1, 4, 1.0)
    assert short["examples"] == [{"id": "shortclip_000002_000005", "clips": 3, "seconds": 3.0}]
    assert report["options"]["window_seconds"] == 4.0


def test_the_preparer_prints_the_short_count(tmp_path, capsys):
    code, _ = prepare_kinetics(tmp_path, "--window-seconds", "0")  # 0: the annotated segment itself
    printed = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 0 and "short (< 4 clips of 1 s)" in printed and "as data.short_videos says" in printed
    records = _records(tmp_path / "k700.jsonl")
    assert records["longcentre"].window == [5.0, 7.0] and records["longend"].window == [10.0, 12.0]


def test_windows_are_clamped_to_the_file():
    assert record_window((5.0, 7.0), 0.0, 12.0, 4.0) == [4.0, 8.0]
    assert record_window((0.0, 1.0), 0.0, 12.0, 4.0) == [0.0, 4.0]  # moved inside, length kept
    assert record_window((10.0, 12.0), 0.0, 12.0, 4.0) == [8.0, 12.0]
    assert record_window((2.0, 5.0), 0.0, 3.0, 30.0) == [0.0, 3.0]  # shorter file: all of it
    assert record_window((5.5, 7.5), 0.5, 12.0, None) == [5.0, 7.0]  # media time -> first-frame time
    assert record_window((11.0, 15.0), 0.0, 12.0, None) == [11.0, 12.0]
    with pytest.raises(ProbeError) as err:
        record_window((20.0, 30.0), 0.0, 12.0, 4.0)
    assert err.value.reason == Reason.SEGMENT_OUTSIDE and "12.00 s" in err.value.detail


@pytest.mark.parametrize("row,fault", [
    ("abseiling,longcentre,five,7,train", "time_start 'five' is not a number of seconds"),
    ("abseiling,longcentre,7,5,train", "time_end 5 is not after time_start 7"),
    ("abseiling,,5,7,train", "youtube_id is empty"),
    ("abseiling,longcentre,5", "has no time_end"),
    ("abseiling,longcentre,5,7,train,extra", "6 fields, the header has 5"),
    ("abseiling,longcentre,-1,7,train", "time_start '-1' is not a time"),
])
def test_a_bad_annotation_row_names_the_file_line_and_fault(tmp_path, row, fault):
    (tmp_path / "annotations").mkdir()
    csv = tmp_path / "annotations" / "train.csv"
    csv.write_text(ANNOTATIONS.replace("abseiling,longend,10,12,train", row))
    with pytest.raises(AnnotationError) as err:
        Kinetics700(tmp_path).entries()
    assert str(err.value).startswith(f"{csv}:3: ") and fault in str(err.value), str(err.value)


def test_a_header_without_the_kinetics_columns_is_refused(tmp_path):
    (tmp_path / "annotations").mkdir()
    csv = tmp_path / "annotations" / "train.csv"
    csv.write_text("label,ytid,start,end,split\nabseiling,x,1,2,train\n")
    with pytest.raises(AnnotationError, match=re.escape(f"{csv}:1: the header lacks column(s) youtube_id, time_start, "
                                                        "time_end")):
        Kinetics700(tmp_path).classes()


def test_the_command_line_stops_on_a_bad_row_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "k700" / "annotations").mkdir(parents=True)
    csv = tmp_path / "k700" / "annotations" / "train.csv"
    csv.write_text(ANNOTATIONS.replace(",2,5,", ",2,x,"))
    tool = run_path(str(ROOT / "tools" / "prepare_data.py"), run_name="cli_test")
    code = tool["main"](["kinetics700", "--root", str(tmp_path / "k700"), "--out", str(tmp_path / "m.jsonl")])
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 2 and f"{csv}:4: time_end 'x' is not a number of seconds" in err
    assert not (tmp_path / "m.jsonl").exists()


# -- the loaders ------------------------------------------------------------------------
def _decoded_frames(monkeypatch) -> list:
    """Every frame index list the PyAV loader asks its decoder for, as it asks."""
    asked = []
    real = pyav_loader.decode_frames

    def spy(path, indices, fps, rgb_out=True):
        asked.append(np.concatenate([np.asarray(i).reshape(-1) for i in indices]))
        return real(path, indices, fps, rgb_out)
    monkeypatch.setattr(pyav_loader, "decode_frames", spy)
    return asked


def _assert_spread_over(frames: np.ndarray, first: int, end: int, step: float):
    """``[T, F]`` frame indices: T clips inside ``[first, end)``, evenly ``step`` apart, none overlapping."""
    starts = frames[:, 0]
    assert starts.min() >= first and frames.max() < end, (frames, first, end)
    assert np.all(np.diff(starts) == step) and step >= CLIP


def test_a_long_video_gives_T_clips_spread_over_its_window(prepared, monkeypatch):
    record = _records(prepared)["longcentre"]  # window 4-8 s: frames [32, 64), 4 slots of 8 frames
    layout = sequence_layout(SPEC, record)
    assert (layout.origin, layout.step, layout.valid, layout.slack) == (32, 8, 4, 1)
    offsets = set()
    for epoch in range(8):
        clips = plan_sample(SPEC, record, True, 0, epoch).views[0][0]
        _assert_spread_over(clips.frames, 32, 64, 8)
        assert clips.valid.all() and np.allclose(clips.starts, clips.frames[:, 0] / FPS)
        offsets.add(int(clips.frames[0, 0]) - 32)
    assert offsets == {0, 1}  # the sequence offset is drawn within the slot's slack

    asked = _decoded_frames(monkeypatch)
    manifest = load_manifest(prepared)
    dataset = ManifestDataset(manifest, SPEC, train=True, seed=0)
    sample = dataset[record.index]
    plan = plan_sample(SPEC, record, True, 0, 0).views[0][0]
    assert np.array_equal(asked[-1], plan.frames.reshape(-1))  # the loader decodes the planned frames
    assert sample["valid"].all() and sample["padded"] == 0 and sample["skipped"] == 0
    grey = sample["video"].float().mean(dim=(1, 3, 4))  # [T, F]: write_media paints frame i (37 i) % 255
    assert (grey - torch.from_numpy((plan.frames * 37) % 255).float()).abs().max() < 4

    test = ManifestDataset(manifest, SPEC, train=False)
    views = plan_sample(SPEC, record, False, 0, 0).views
    assert [int(clips.frames[0, 0]) for clips, _ in views] == [32, 33]  # test views spread over the slack
    assert test[record.index]["valid"].shape == (2, 4) and test[record.index]["valid"].all()


def test_a_window_past_the_file_end_is_clamped_by_the_loader(prepared):
    record = dataclasses.replace(_records(prepared)["longcentre"], window=[6.0, 20.0])  # frames [48, 96)
    layout = sequence_layout(SPEC, record)
    assert (layout.origin, layout.step, layout.valid) == (48, 12, 4)
    for epoch in range(4):
        _assert_spread_over(plan_sample(SPEC, record, True, 0, epoch).views[0][0].frames, 48, 96, 12)
    whole = dataclasses.replace(record, window=None)  # no window: the whole 12 s file, 3 s slots
    _assert_spread_over(plan_sample(SPEC, whole, True, 0, 0).views[0][0].frames, 0, 96, 24)


def _epoch(loader, batches: int) -> list[dict]:
    return [next(loader) for _ in range(batches)]


def _short_manifest(prepared: Path, folder: Path) -> Path:
    """The prepared records twice over (6 records, 2 short), for whole batches of 3."""
    manifest = load_manifest(prepared)
    records = [dataclasses.replace(r, id=f"{n}_{r.id}") for n in range(2) for r in manifest.records]
    return write_manifest(records, folder / "twice.jsonl", manifest.classes)


def test_a_short_video_under_pad_is_masked_and_counted_by_both_loaders(prepared, tmp_path):
    manifest = load_manifest(_short_manifest(prepared, tmp_path))
    short = next(r for r in manifest.records if r.id.startswith("0_shortclip"))
    sample = ManifestDataset(manifest, SPEC, train=True)[short.index]
    assert sample["valid"].tolist() == [True, True, True, False]  # 3 s: 3 clips 1 s apart fit
    assert (sample["padded"], sample["padded_clips"], sample["skipped"]) == (1, 1, 0)
    test = ManifestDataset(manifest, SPEC, train=False)[short.index]
    assert test["valid"].tolist() == [[True, True, True, False]] * 2

    pyav = PyAVLoader(ManifestDataset(manifest, SPEC, train=True), 3, seed=0)
    dali = DaliLoader(manifest, SPEC, 3, seed=0)
    for loader in (pyav, dali):
        batches = _epoch(loader, 2)  # one epoch: every record once
        valid = torch.cat([b["valid"] for b in batches])
        assert valid.shape == (6, 4) and int((~valid).sum()) == 2
        assert {k: v for k, v in loader.skipped.items() if v} == {"padded": 2, "padded_clips": 2}, loader.name
        assert all(not any(k.startswith(("padded", "skipped")) for k in b) for b in batches)
    assert torch.equal(torch.cat([b["index"] for b in _epoch(pyav, 2)]),
                       torch.cat([b["index"] for b in _epoch(dali, 2)]))
    assert pyav.state_dict()["skipped"]["padded"] == 4  # checkpointed with the loader's position


def test_a_short_video_under_skip_is_left_out_and_counted_by_both_loaders(prepared, tmp_path):
    manifest = load_manifest(_short_manifest(prepared, tmp_path))
    spec = dataclasses.replace(SPEC, short_videos="skip")
    short = next(r for r in manifest.records if r.id.startswith("0_shortclip"))
    with pytest.raises(ShortVideo, match="3 of 4 clips"):
        plan_sample(spec, short, True, 0, 0)
    sample = ManifestDataset(manifest, spec, train=True)[short.index]
    assert sample["index"] != short.index and sample["valid"].all()  # the next record stands in
    assert (sample["skipped"], sample[f"skipped/{Reason.SHORT_VIDEO}"], sample["padded"]) == (1, 1, 0)

    shorts = {r.index for r in manifest.records if "shortclip" in r.id}
    for loader in (PyAVLoader(ManifestDataset(manifest, spec, train=True), 3, seed=0),
                   DaliLoader(manifest, spec, 3, seed=0)):
        batches = _epoch(loader, 2)
        assert all(b["valid"].all() for b in batches)
        assert not shorts & set(torch.cat([b["index"] for b in batches]).tolist())
        counted = {k: v for k, v in loader.skipped.items() if v}
        assert counted == {"skipped": 2, f"skipped/{Reason.SHORT_VIDEO}": 2}, loader.name


def test_the_policy_is_a_checked_config_key():
    from avbert.config import ConfigError, DataConfig, config_from_dict

    assert DataConfig().short_videos == "pad"
    assert ClipSpec.from_config(config_from_dict({"data": {"short_videos": "skip"}}).data).short_videos == "skip"
    with pytest.raises(ConfigError, match=r"run.yaml: data.short_videos: invalid value 'trim'; allowed values: "
                                          r"'pad', 'skip'"):
        config_from_dict({"data": {"short_videos": "trim"}}, source="run.yaml")


def test_loader_counts_reach_the_metrics_line():
    from avbert.train.metrics import combine_counts

    ranks = [{"clips": 10, "peak_mem_mb": 1.0, "skipped": {"skipped": 1, "skipped/short_video": 1,
                                                           "padded": 2, "padded_clips": 3}},
             {"clips": 10, "peak_mem_mb": 2.0, "skipped": {"skipped": 0, "skipped/short_video": 0,
                                                           "padded": 1, "padded_clips": 1}}]
    line = combine_counts(ranks, 1.0)
    assert line["data/skipped"] == 1 and line["data/skipped/short_video"] == 1
    assert line["data/padded"] == 3 and line["data/padded_clips"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["pad", "skip"])
def test_a_pretraining_run_counts_short_videos_in_metrics_jsonl(prepared, tmp_path, policy):
    manifest = load_manifest(prepared)
    records = [dataclasses.replace(r, id=f"{n}_{r.id}") for n in range(2) for r in manifest.records]
    path = write_manifest(records[:4], tmp_path / "run.jsonl", manifest.classes)  # 1 short of 4
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    command = [
        sys.executable, "-m", "avbert.train", "pretrain", "model.preset=tiny", "data.preset=tiny",
        "data.source=manifest", f"data.manifest={path}", "data.split=train", "data.batch_size=4",
        "data.clip_seconds=1.0", "data.frame_stride=2", "data.short_side=[36, 44]", "data.loader=pyav",
        f"data.short_videos={policy}", "train.steps=2", "train.log_every=1", "train.precision=fp32",
        "train.zero_stage=0", "objective.sampler=current_minibatch", f"train.run_dir={run_dir}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    if policy == "pad":  # every step sees the short video once, padded by one clip
        assert (last["data/padded"], last["data/padded_clips"], last["data/skipped"]) == (2, 2, 0), last
    else:
        assert (last["data/skipped"], last["data/skipped/short_video"], last["data/padded"]) == (2, 2, 0), last
