"""The DALI and PyAV manifest loaders: one output contract, the same clips, alignment,
sharding, and a position that survives a restart."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from av.video.reformatter import Interpolation, VideoReformatter
from nvidia.dali import fn, pipeline_def
from test_data_media import prepared_manifest

from avbert.data.build import choose_loader, gpu_count
from avbert.data.clips import ClipSpec, CropPlan
from avbert.data.dali_loader import DaliLoader
from avbert.data.manifest import Manifest, MediaRecord, load_manifest, write_manifest
from avbert.data.pixels import crop_clips
from avbert.data.probe import rgb
from avbert.data.pyav_loader import (
    ManifestDataset,
    PyAVEvalLoader,
    PyAVLoader,
    decode_frames,
)
from avbert.data.synthetic import SyntheticSpec, alignment_probe, write_raw

SPEC = ClipSpec(clips=3, clip_seconds=1.0, frames_per_clip=4, frame_stride=2, crop_size=32,
                short_side=(36, 44), n_mels=40, mel_frames=32, hop_length=256, n_fft=512,
                spec_augment=0.1, test_views=2, test_crops=3)
DB = 20.0  # normalised log-mel units are 20 dB
DALI_CONVERSION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
"""swscale flags of the colour conversion in DALI's CPU video decoder."""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    return load_manifest(prepared_manifest(tmp_path_factory.mktemp("loaders"), 8))


def _pyav(manifest, train=True, seed=0, batch=4, **kw):
    dataset = ManifestDataset(manifest, SPEC, train=train, seed=seed)
    return PyAVLoader(dataset, batch, seed=seed, **kw) if train else PyAVEvalLoader(dataset, batch)


def _batches(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def _assert_same_contract(a: dict, b: dict):
    assert set(a) == set(b) == {"video", "audio", "valid", "label", "index"}
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    assert torch.equal(a["valid"], b["valid"]) and torch.equal(a["label"], b["label"])
    assert torch.equal(a["index"], b["index"])
    for video in (a["video"], b["video"]):  # batched as the crops are laid out (pixels.stack_clips)
        assert video.movedim(-4, -1).is_contiguous()
    assert (a["video"].float() - b["video"].float()).abs().mean() < 3  # grey levels (1.7 measured: colour conversion)
    assert (a["audio"] - b["audio"]).abs().mean() * DB < 0.5


def test_both_loaders_cut_the_same_training_clips(manifest):
    dali, pyav = _batches(DaliLoader(manifest, SPEC, 4, seed=3), 2), _batches(_pyav(manifest, seed=3), 2)
    for a, b in zip(dali, pyav):
        assert a["video"].shape == (4, 3, 3, 4, 32, 32) and a["video"].dtype == torch.uint8
        assert a["audio"].shape == (4, 3, 1, 40, 32) and a["valid"].shape == (4, 3)
        assert a["label"].dtype == torch.int64 and a["index"].dtype == torch.int64
        _assert_same_contract(a, b)
        assert (a["audio"] == 0).any()  # SpecAugment masks, the same in both


def test_both_loaders_give_the_same_test_views(manifest):
    dali, pyav = list(DaliLoader(manifest, SPEC, 3, train=False)), list(_pyav(manifest, train=False, batch=3))
    assert [len(b["index"]) for b in dali] == [3, 3, 2] and len(dali) == len(pyav)
    for a, b in zip(dali, pyav):
        _assert_same_contract(a, b)
    video, audio = dali[0]["video"], dali[0]["audio"]
    assert video.shape == (3, 6, 3, 3, 4, 32, 32) and audio.shape == (3, 6, 3, 1, 40, 32)
    assert not torch.equal(video[:, 0], video[:, 2])  # left and right crops differ
    assert torch.equal(audio[:, 0], audio[:, 2]) and not torch.equal(audio[:, 0], audio[:, 3])
    assert sorted(torch.cat([b["index"] for b in dali]).tolist()) == list(range(8))


def test_both_loaders_compute_the_ln_log_mel(manifest):
    """``log_mel: ln`` (the released ``ln(1e-6 + mel power)``, unscaled): the DALI graph and
    torch give the same values, which are the dB form's values in nepers wherever the
    power is well above the 1e-6 offset."""
    ln_spec = replace(SPEC, log_mel="ln")
    dali_ln = next(iter(DaliLoader(manifest, ln_spec, 4, train=False)))["audio"]
    pyav_ln = next(iter(PyAVEvalLoader(ManifestDataset(manifest, ln_spec, train=False), 4)))["audio"]
    dali_db = next(iter(DaliLoader(manifest, SPEC, 4, train=False)))["audio"] * DB - DB  # normalised -> dB
    nepers_per_db = math.log(10) / 10
    assert dali_ln.shape == dali_db.shape and (dali_ln - pyav_ln).abs().mean() < 0.5 * nepers_per_db
    loud = dali_db > -50  # power above 1e-5: ln(1e-6 + x) is within ln(1.1) of ln(x)
    assert loud.float().mean() > 0.5
    torch.testing.assert_close(dali_ln[loud], dali_db[loud] * nepers_per_db, rtol=0, atol=0.1)


@pytest.mark.parametrize("train", [True, False])
def test_the_gpu_paths_graph_resize_gives_the_cpu_paths_pixels(manifest, train):
    """The GPU path resizes and mirrors crops inside the DALI graph; run on the CPU here,
    its pixels match the CPU path's torch crops (same boxes, same filter)."""
    kw = dict(seed=3, train=train)
    torch_crops = next(iter(DaliLoader(manifest, SPEC, 4, **kw)))
    graph_crops = next(iter(DaliLoader(manifest, SPEC, 4, graph_resize=True, **kw)))
    difference = (torch_crops["video"].float() - graph_crops["video"].float()).abs()
    assert torch_crops["video"].shape == graph_crops["video"].shape
    assert difference.mean() < 1  # grey levels (0.2 measured); a box 2 px off or a missed flip gives 6-8
    flipped = (torch_crops["video"].float() - graph_crops["video"].flip(-1).float()).abs().mean()
    assert flipped > 3 * difference.mean()


def test_without_a_gpu_dali_crops_the_next_batch_in_its_crop_thread(manifest, monkeypatch):
    """The CPU path's crops run beside the caller, one batch ahead, and a loader rewound
    while a batch is being prefetched gives the batches of the restored position."""
    import threading

    import avbert.data.dali_loader as dali_loader

    threads, crop = [], dali_loader.crop_clips
    monkeypatch.setattr(dali_loader, "crop_clips",
                        lambda *a, **k: threads.append(threading.current_thread().name) or crop(*a, **k))
    loader = DaliLoader(manifest, SPEC, 4, seed=7)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    assert threads and all(name.startswith("avbert-dali-crop") for name in threads)
    loader.load_state_dict(state)  # waits for the batch in flight, and drops it
    assert len(threads) == 4 * 4  # three batches taken and a fourth prefetched, 4 videos each
    for want, got in zip(expected, [next(loader) for _ in range(3)]):
        assert torch.equal(want["video"], got["video"]) and torch.equal(want["index"], got["index"])
    loader.close()


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Manifest:
    """Four flash-and-click videos (6 s, 8 fps, 32x32) with the events at known frames."""
    folder = tmp_path_factory.mktemp("probes")
    spec = SyntheticSpec(clips=6, frames_per_clip=8, frame_size=32, fps=8.0)
    records = []
    for i, frame in enumerate((16, 18, 20, 23)):
        raw = write_raw(alignment_probe(spec, frame / 8.0), str(folder), f"probe_{i}", "train")
        records.append(MediaRecord(id=f"probe_{i}", video=raw["video"], audio=raw["audio"], splits=["train"],
                                   duration=6.0, label=frame, fps=8.0, num_frames=48, codec="vp9", width=32,
                                   height=32, sample_rate=16000, video_bytes=os.path.getsize(raw["video"]),
                                   audio_bytes=os.path.getsize(raw["audio"])))
    return load_manifest(write_manifest(records, folder / "probes.jsonl"))


ALIGN = ClipSpec(clips=4, clip_seconds=1.0, frames_per_clip=8, frame_stride=1, crop_size=32, short_side=(32, 32),
                 n_mels=40, mel_frames=32, hop_length=500, n_fft=1000, spec_augment=0.0, test_views=2, test_crops=1)


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_flash_and_click_fall_in_the_same_clip(probes, train):
    dali = next(iter(DaliLoader(probes, ALIGN, 4, seed=1, train=train)))
    dataset = ManifestDataset(probes, ALIGN, train=train, seed=1)
    pyav = next(iter(PyAVLoader(dataset, 4, seed=1) if train else PyAVEvalLoader(dataset, 4)))
    for batch in (dali, pyav):
        video = batch["video"] if not train else batch["video"][:, None]
        audio = batch["audio"] if not train else batch["audio"][:, None]
        flash = video.float().mean(dim=(3, 4, 5, 6)).argmax(-1)  # brightest clip of each view
        click = audio.amax(dim=(3, 4, 5)).argmax(-1)  # loudest clip of each view
        assert torch.equal(flash, click)
    assert torch.equal(dali["video"].float().mean(dim=(-4, -3, -2, -1)).argmax(-1),
                       pyav["video"].float().mean(dim=(-4, -3, -2, -1)).argmax(-1))


@pytest.mark.parametrize("kind", ["dali", "pyav"])
def test_restored_position_gives_the_same_next_batches(manifest, kind):
    make = (lambda: DaliLoader(manifest, SPEC, 4, seed=7)) if kind == "dali" else (lambda: _pyav(manifest, seed=7))
    first = make()
    next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(3)]  # crosses into the next epoch (2 batches each)
    resumed = make()
    resumed.load_state_dict(state)
    for want, got in zip(expected, [next(resumed) for _ in range(3)]):
        for key in want:
            assert torch.equal(want[key], got[key]), key
    assert resumed.state_dict() == first.state_dict()
    assert (first.state_dict()["epoch"], first.state_dict()["position"]) == (1, 2)


def test_ranks_share_an_epoch_without_overlap(manifest):
    seen = [torch.cat([next(DaliLoader(manifest, SPEC, 2, rank=r, world_size=2, seed=5))["index"]])
            for r in (0, 1)]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    orders = [torch.cat([b["index"] for b in _batches(DaliLoader(manifest, SPEC, 4, seed=s), 2)]) for s in (5, 6)]
    assert sorted(orders[0].tolist()) == sorted(orders[1].tolist()) == list(range(8))
    assert not torch.equal(orders[0], orders[1])


def test_pyav_crops_as_dali_crops_from_a_faster_colour_conversion(manifest):
    record = manifest.records[0]
    encoded = np.fromfile(record.video, np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        video = fn.external_source(source=lambda: [encoded], batch=True)
        frames = fn.external_source(source=lambda: [np.arange(6, dtype=np.int32)], batch=True)
        return fn.decoders.video(video, frames=frames, pad_mode="none")

    pipe = decode()
    pipe.build()
    dali = np.asarray(pipe.run()[0][0])
    reformatter = VideoReformatter()
    frames = [decode_frames(record.video, range(6), record.fps, rgb_out=False)[i] for i in range(6)]
    exact = [reformatter.reformat(f, format="rgb24", threads=1, interpolation=DALI_CONVERSION).to_ndarray()
             for f in frames]
    assert np.array_equal(np.stack(exact), dali)  # what DALI's CPU decoder does: swscale with these flags
    fast = np.stack([rgb(reformatter, f) for f in frames])  # what the PyAV loader does
    assert 0 < np.abs(fast.astype(int) - dali).mean() < 3

    spec = ClipSpec(clips=2, clip_seconds=1.0, frames_per_clip=3, frame_stride=1, crop_size=24, short_side=(36, 44))
    convert = partial(rgb, reformatter)
    for crop in (CropPlan(40, 53, 6, 10, False), CropPlan(36, 48, 3, 11, True)):
        cut = crop_clips(frames, crop, spec, convert)  # decoded frames, converted one by one
        assert cut.shape == (2, 3, 3, 24, 24) and cut.dtype == torch.uint8
        assert torch.equal(cut, crop_clips(fast, crop, spec))  # the same as converting them all first
        resized = crop_clips(list(dali), crop, spec)  # the DALI loader's CPU crop of the same frames
        assert (cut.float() - resized.float()).abs().mean() < 3
        assert (cut.float() - resized.flip(-1).float()).abs().mean() > 4.0  # a missed mirror would show
    other = [f.reformat(format="yuv444p") for f in frames]  # any pixel format converts
    assert crop_clips(other, crop, spec, convert).shape == (2, 3, 3, 24, 24)


@pytest.mark.slow
def test_pyav_workers_give_what_the_main_process_gives(manifest):
    inline, workers = _pyav(manifest, seed=2), _pyav(manifest, seed=2, num_workers=2)
    for a, b in zip(_batches(inline, 2), _batches(workers, 2)):
        for key in a:
            assert torch.equal(a[key], b[key]), key
        assert b["video"].movedim(-4, -1).is_contiguous()  # the layout crosses the worker queue


def test_loader_choice_follows_the_codecs_this_machine_decodes(manifest):
    assert choose_loader("auto", manifest, gpus=0)[0] == "dali"
    h264 = Manifest(Path("k.jsonl"), [MediaRecord("a", "a.mp4", "a.flac", ["train"], 1.0, codec="h264")], [])
    assert choose_loader("auto", h264, gpus=0) == ("pyav", "DALI (no GPU, CPU decoder) cannot decode ['h264']")
    assert choose_loader("auto", h264, gpus=1)[0] == "dali"
    assert choose_loader("pyav", manifest, gpus=1)[0] == "pyav"
    with pytest.raises(ValueError, match="cannot decode"):
        choose_loader("dali", h264, gpus=0)


def test_multilabel_and_audio_only_manifests(manifest, tmp_path):
    records = []
    for record in manifest.records:
        records.append(MediaRecord(record.id, None, record.audio, ["train"], record.duration, labels=[0, 2],
                                   sample_rate=16000, audio_bytes=record.audio_bytes))
    audio_only = load_manifest(write_manifest(records, tmp_path / "a.jsonl", ["x", "y", "z"]))
    a, b = next(DaliLoader(audio_only, SPEC, 4, seed=1)), next(_pyav(audio_only, seed=1))
    assert set(a) == set(b) == {"audio", "valid", "label", "index"}
    assert a["label"].shape == (4, 3) and a["label"].dtype == torch.float32
    assert torch.equal(a["label"], torch.tensor([[1.0, 0.0, 1.0]] * 4))
    assert (a["audio"] - b["audio"]).abs().mean() * DB < 0.5 and torch.equal(a["valid"], b["valid"])


def test_a_run_picks_its_loader_and_says_which(manifest, caplog):
    from avbert.config import Config, DataConfig
    from avbert.data.build import build_train_loader

    cfg = Config(data=DataConfig.from_preset("tiny"))
    cfg.data.source, cfg.data.manifest, cfg.data.batch_size = "manifest", str(manifest.path), 4
    with caplog.at_level("INFO", logger="avbert.data"):
        auto = build_train_loader(cfg, 0, 1)
        cfg.data.loader = "pyav"
        forced = build_train_loader(cfg, 0, 1)
    assert (auto.name, forced.name) == ("dali", "pyav")
    assert "dali loader" in caplog.text and "data.loader is 'pyav'" in caplog.text
    a, b = next(auto), next(forced)
    assert a["video"].shape == b["video"].shape == (4, 4, 3, 4, 32, 32)


@pytest.mark.skipif(gpu_count() == 0 or not torch.cuda.is_available(), reason="NVDEC needs a GPU")
def test_nvdec_reads_h264_as_pyav_does(tmp_path):
    from test_data_media import write_media

    from avbert.data.datasets import Generic
    from avbert.data.prepare import PrepareOptions, prepare_dataset

    for index in range(4):
        write_media(tmp_path / "root" / "train" / "a" / f"v{index}.mp4", frames=40, fps=8.0, size=(48, 64))
    prepare_dataset(Generic(tmp_path / "root"), tmp_path / "m.jsonl", PrepareOptions(str(tmp_path / "audio")))
    manifest = load_manifest(tmp_path / "m.jsonl")
    assert choose_loader("auto", manifest, gpus=1)[0] == "dali" and manifest.codecs == {"h264"}
    gpu = next(DaliLoader(manifest, SPEC, 4, seed=1, device_id=0))
    cpu = next(_pyav(manifest, seed=1))
    assert gpu["video"].is_cuda
    _assert_same_contract({k: v.cpu() for k, v in gpu.items()}, cpu)


def test_test_views_are_cropped_to_the_test_crop_size(tmp_path):
    """The released configs train on 112 crops and test on 128 (TEST_CROP_SIZE): the test
    loader scales and crops to ``data.test_crop_size``, the training loader to ``crop_size``."""
    from avbert.config import DataConfig
    from avbert.data.build import build_manifest_loader
    from avbert.data.manifest import write_manifest
    from avbert.data.synthetic import SyntheticSpec, write_media

    spec = SyntheticSpec(num_videos=4, num_classes=2, num_events=2, clips=4, frames_per_clip=4, frame_size=48, fps=8.0)
    records = write_media(spec, str(tmp_path / "media"))
    for record in records:
        record["split"], record["width"], record["height"] = "train", spec.frame_size, spec.frame_size
    manifest = write_manifest(records, tmp_path / "m.jsonl", ["a", "b"])
    data = DataConfig(preset="tiny", source="manifest", manifest=str(manifest), loader="pyav", clips=2,
                      clip_seconds=0.5, frames_per_clip=4, frame_stride=1, crop_size=32, test_crop_size=40,
                      short_side=(32, 40), sample_rate=16000, n_mels=40, mel_frames=32, hop_ms=16.0,
                      log_mel="db", batch_size=2, num_workers=0, test_views=1, test_crops=1)
    train = next(iter(build_manifest_loader(data, train=True, split="train")))
    test = next(iter(build_manifest_loader(data, train=False, split="train")))
    assert train["video"].shape[-2:] == (32, 32) and test["video"].shape[-2:] == (40, 40)
