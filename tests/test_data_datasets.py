"""Every dataset layout read from a small tree in its real annotation format
(tests/fixtures/datasets), media generated here; and prepared end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_data_media import write_media

from avbert.data.build import choose_loader
from avbert.data.clips import ClipSpec
from avbert.data.dali_loader import DaliLoader
from avbert.data.datasets import layout
from avbert.data.manifest import load_manifest
from avbert.data.prepare import PrepareOptions, prepare_dataset
from avbert.data.pyav_loader import ManifestDataset, PyAVLoader

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
SPEC = ClipSpec(clips=2, clip_seconds=0.5, frames_per_clip=2, frame_stride=2, crop_size=24, short_side=(28, 32),
                n_mels=32, mel_frames=16, hop_length=256, n_fft=512, test_views=1, test_crops=1)


def build_tree(name: str, folder: Path) -> Path:
    """A copy of the fixture tree with every media file of its ``media.txt`` written."""
    root = folder / name
    shutil.copytree(FIXTURES / name, root)
    for line in (root / "media.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            relative, *flags = line.rsplit(" ", 1) if line.endswith(" silent") else (line, )
            write_media(root / relative, audio=not flags)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    folder = tmp_path_factory.mktemp("datasets")
    return {name: build_tree(name, folder) for name in
            ("kinetics700", "ucf101", "esc50", "charades", "audioset", "generic")}


def _entries(name, trees, classes_file=None):
    dataset = layout(name, trees[name if name != "kinetics_sounds" else "kinetics700"], classes_file)
    return dataset, {e.id: e for e in dataset.entries()}


def test_kinetics700(trees):
    dataset, entries = _entries("kinetics700", trees)
    assert dataset.classes() == ["abseiling", "passing American football (in game)", "playing bagpipes",
                                 "tapping pen"]
    clip = entries["-3B32lodo2M_000059_000069"]
    assert clip.labels == ["playing bagpipes"] and clip.splits == ["train"] and clip.path.endswith(".mp4")
    assert entries["--Mo0wEuG8U_000010_000020"].path is None  # annotated, never downloaded
    assert entries["--0NpaXkt3k_000004_000014"].labels == [] and entries["--0NpaXkt3k_000004_000014"].splits == ["test"]
    assert entries["_fYWJgCAz4c_000036_000046"].splits == ["val"]


def test_kinetics_sounds_keeps_its_classes_only(trees, tmp_path):
    dataset, entries = _entries("kinetics_sounds", trees)
    assert len(dataset.classes()) == 32 and "playing bagpipes" in dataset.classes()
    assert {e.labels[0] for e in entries.values()} == {"playing bagpipes", "tapping pen"}
    (tmp_path / "classes.txt").write_text("abseiling\n")
    dataset, entries = _entries("kinetics_sounds", trees, str(tmp_path / "classes.txt"))
    assert dataset.classes() == ["abseiling"] and len(entries) == 2


def test_ucf101_three_official_splits(trees):
    dataset, entries = _entries("ucf101", trees)
    assert dataset.classes() == ["ApplyEyeMakeup", "ApplyLipstick", "HandstandPushups"]
    assert entries["v_ApplyEyeMakeup_g08_c01"].splits == ["train1", "test2", "train3"]
    assert entries["v_HandStandPushups_g01_c03"].labels == ["HandstandPushups"]  # the folder/file case quirk
    assert entries["v_HandStandPushups_g01_c03"].splits == ["test1", "train2", "train3"]
    assert all(e.path and e.path.endswith(".avi") for e in entries.values())


def test_esc50_five_folds(trees):
    dataset, entries = _entries("esc50", trees)
    assert dataset.audio_only and len(dataset.classes()) == 50 and dataset.classes()[14] == "chirping_birds"
    assert entries["3-100018-A-0"].splits == ["test3", "train1", "train2", "train4", "train5"]
    assert entries["3-100018-A-0"].labels == ["dog"] and entries["3-100018-A-0"].path.endswith(".wav")


def test_charades_multilabel_actions(trees):
    dataset, entries = _entries("charades", trees)
    assert dataset.multilabel and dataset.classes()[3] == "Someone is laughing"
    assert entries["46GP8"].labels == ["Sitting on a chair", "Someone is laughing"]
    assert entries["N11GT"].labels == ["Holding some clothes", "Sitting on a chair"]
    assert entries["0IH69"].labels == [] and entries["YSKX3"].splits == ["test"]


def test_audioset_segments_and_file_names(trees):
    dataset, entries = _entries("audioset", trees)
    assert dataset.classes() == ["Speech", "Male speech, man speaking", "Music", "Animal"]
    assert entries["--PJHxphWEs_30000"].labels == ["Male speech, man speaking", "Speech"]
    assert all(e.path for e in entries.values()), [e.id for e in entries.values() if not e.path]
    assert entries["-0DLPzsiXXE_30000"].splits == ["eval"]
    assert entries["-1nilez17Dg_30000"].splits == ["balanced_train"]


def test_generic_split_label_tree(trees):
    dataset, entries = _entries("generic", trees)
    assert dataset.classes() == ["cat", "dog"]
    assert entries["val/dog/d"].labels == ["dog"] and entries["val/dog/d"].splits == ["val"]


def _prepare(name, trees, tmp_path, **options):
    manifest = tmp_path / f"{name}.jsonl"
    opts = PrepareOptions(audio_dir=str(tmp_path / "audio"), **options)
    report = prepare_dataset(layout(name, trees[name]), manifest, opts, workers=0)
    return load_manifest(manifest), report


def test_prepared_kinetics_is_read_by_pyav_on_cpu(trees, tmp_path):
    manifest, report = _prepare("kinetics700", trees, tmp_path)
    assert report["skipped_by_reason"] == {"missing": 1} and len(manifest.records) == 6
    assert manifest.codecs == {"h264"} and choose_loader("auto", manifest, gpus=0)[0] == "pyav"
    train = manifest.split("train")
    batch = next(PyAVLoader(ManifestDataset(train, SPEC, seed=0), 3, seed=0))
    assert batch["video"].shape == (3, 2, 3, 2, 24, 24) and batch["label"].tolist() != [-1] * 3


def test_prepared_ucf101_keeps_silent_videos_for_visual_use(trees, tmp_path):
    manifest, report = _prepare("ucf101", trees, tmp_path, require_audio=False)
    silent = [r for r in manifest.records if r.audio is None]
    assert len(manifest.records) == 5 and len(silent) == 1 and manifest.codecs == {"mpeg4"}
    assert "no audio" in report["warnings"][0]["flags"][0]
    split = manifest.split("test1")
    dataset = ManifestDataset(split, SPEC, train=False, require_audio=False)
    item = dataset[[r.id for r in split.records].index(silent[0].id)]
    assert item["skipped"] == 0 and torch.all(item["audio"] == item["audio"].min())  # silence
    assert ManifestDataset(split, SPEC, train=False)[1]["skipped/no_audio"] == 1


def test_prepared_esc50_is_audio_only_for_both_loaders(trees, tmp_path):
    manifest, _ = _prepare("esc50", trees, tmp_path)
    assert manifest.audio_only and all(abs(r.duration - 2.0) < 0.05 for r in manifest.records)
    assert manifest.records[0].label == 0 and manifest.records[4].label == 49
    fold = manifest.split("train1")
    a = next(DaliLoader(fold, SPEC, 4, seed=0))
    b = next(PyAVLoader(ManifestDataset(fold, SPEC, seed=0), 4, seed=0))
    assert "video" not in a and a["audio"].shape == b["audio"].shape == (4, 2, 1, 32, 16)
    assert (a["audio"] - b["audio"]).abs().mean() * 20 < 0.5


def test_prepared_charades_gives_multi_hot_labels(trees, tmp_path):
    manifest, _ = _prepare("charades", trees, tmp_path)
    record = next(r for r in manifest.records if r.id == "46GP8")
    assert record.labels == [3, 4] and record.label is None and manifest.multilabel
    item = ManifestDataset(manifest, SPEC, train=False)[0]
    assert item["label"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_prepare_data_command_line(trees, tmp_path):
    from runpy import run_path

    tool = run_path(str(Path(__file__).parents[1] / "tools" / "prepare_data.py"), run_name="cli_test")
    out = tmp_path / "generic.jsonl"
    assert tool["main"](["generic", "--root", str(trees["generic"]), "--out", str(out), "--workers", "1"]) == 0
    manifest = load_manifest(out)
    assert len(manifest.records) == 4 and manifest.classes == ["cat", "dog"]
    assert (tmp_path / "generic.report.json").exists() and (tmp_path / "generic_audio").is_dir()
