"""Bad media never stops a run: the preparer reports each file with its reason, and the
loaders replace bad records, count them per reason and keep batch shapes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from avbert.data.clips import ClipSpec
from avbert.data.dali_loader import DaliLoader
from avbert.data.datasets import Generic
from avbert.data.manifest import MissingMediaError, load_manifest, report_path
from avbert.data.prepare import PrepareOptions, TimedPool, prepare_dataset
from avbert.data.probe import probe_media
from avbert.data.pyav_loader import ManifestDataset, PyAVLoader
from avbert.data.synthetic import generate_video, write_raw
from test_data_media import BAD_KINDS, SPEC, make_bad, mixed_manifest, prepared_manifest, widen

LOADER_SPEC = ClipSpec(clips=4, clip_seconds=1.0, frames_per_clip=4, frame_stride=2, crop_size=32,
                       short_side=(36, 44), n_mels=40, mel_frames=32, hop_length=256, n_fft=512,
                       test_views=2, test_crops=1)


@pytest.fixture(scope="module")
def dataset_tree(tmp_path_factory) -> Path:
    """A ``generic`` tree: two good videos, one file of every bad kind, a misnamed WebM."""
    root = tmp_path_factory.mktemp("tree") / "root"
    folder = root / "train" / "things"
    for index in range(2):
        raw = generate_video(SPEC, index)
        raw.frames = widen(raw.frames)
        write_raw(raw, str(folder), f"good_{index}", "train", mux_audio=True)
    for flac in folder.glob("*.flac"):
        flac.unlink()
    good = folder / "good_0.webm"
    for kind, (name, _) in BAD_KINDS.items():
        make_bad(kind, folder / name, good)
    make_bad("misnamed", folder / "misnamed.mp4", good)
    return root


@pytest.mark.slow
def test_preparer_reports_every_bad_file_with_its_reason(dataset_tree, tmp_path):
    manifest = tmp_path / "m.jsonl"
    options = PrepareOptions(audio_dir=str(tmp_path / "audio"), timeout=60)
    report = prepare_dataset(Generic(dataset_tree), manifest, options, workers=2)
    assert report == json.loads(report_path(manifest).read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {name: reason for name, reason in BAD_KINDS.values()}
    assert all(s["detail"] for s in report["skipped"])
    assert report["kept"] == 3 and report["total"] == 3 + len(BAD_KINDS)
    warned = {Path(w["path"]).name: w["flags"] for w in report["warnings"]}
    assert list(warned) == ["misnamed.mp4"] and "extension_mismatch" in warned["misnamed.mp4"][0]
    loaded = load_manifest(manifest)
    assert sorted(Path(r.video).name for r in loaded.records) == ["good_0.webm", "good_1.webm", "misnamed.mp4"]
    assert all(Path(r.audio).stat().st_size == r.audio_bytes for r in loaded.records)


def test_preparer_can_transcode_variable_frame_rate_videos(dataset_tree, tmp_path):
    tree = tmp_path / "root" / "val" / "things"
    tree.mkdir(parents=True)
    os.symlink(dataset_tree / "train" / "things" / "vfr.webm", tree / "vfr.webm")
    options = PrepareOptions(audio_dir=str(tmp_path / "audio"), vfr="transcode")
    report = prepare_dataset(Generic(tmp_path / "root"), tmp_path / "m.jsonl", options, workers=0)
    assert report["kept"] == 1, report["skipped"]
    record = load_manifest(tmp_path / "m.jsonl").records[0]
    info = probe_media(record.video)
    assert not info.video.vfr and record.fps == pytest.approx(info.video.fps) and record.codec == "vp9"
    assert "transcoded" in report["warnings"][0]["flags"][0]


def test_pool_gives_up_on_hung_and_crashed_calls():
    # eval of short expressions: workers that import nothing start fast
    calls = ["1 + 1", "__import__('time').sleep(60)", "__import__('os')._exit(3)", "2 * 3", "'done'"]
    pool = TimedPool(eval, workers=2, timeout=1.5, on_failure=lambda argument, detail: detail)
    started = time.monotonic()
    try:
        results = dict(pool.run(calls))
    finally:
        pool.close()
    assert time.monotonic() - started < 10
    assert results[0] == 2 and results[3] == 6 and results[4] == "done"
    assert results[1].startswith("no result within") and results[2].startswith("worker died")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    goods = load_manifest(prepared_manifest(folder, 8)).records
    return mixed_manifest(folder, goods)


def test_missing_files_stop_the_run_before_it_starts(mixed):
    with pytest.raises(MissingMediaError, match=r"2 file\(s\)"):  # the missing file and the broken link
        load_manifest(mixed[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dali", "pyav"])
def test_loaders_replace_and_count_bad_records(mixed, kind):
    path, expected = mixed
    manifest = load_manifest(path, check=False)
    if kind == "dali":
        loader = DaliLoader(manifest, LOADER_SPEC, 4, seed=0)
    else:
        loader = PyAVLoader(ManifestDataset(manifest, LOADER_SPEC, seed=0), 4, seed=0)
    good = {r.index for r in manifest.records if r.id.split("_", 1)[1].startswith("train/")}
    for _ in range(loader.batches_per_epoch):  # one full pass: every record is planned once
        batch = next(loader)
        assert batch["video"].shape == (4, 4, 3, 4, 32, 32) and batch["audio"].shape == (4, 4, 1, 40, 32)
        assert set(batch["index"].tolist()) <= good and batch["video"].dtype == torch.uint8
    counted = {key: value for key, value in loader.skipped.items() if value}
    assert counted == expected
    assert loader.state_dict()["skipped"] == loader.skipped
