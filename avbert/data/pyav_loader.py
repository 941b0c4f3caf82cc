"""Manifest loader for machines without a GPU, and for media DALI's CPU decoder cannot
read (H.264, HEVC, MPEG-4 on CPU): PyAV decodes, torchaudio computes the log-mel.

``ManifestDataset`` turns one manifest record into the suite's sample: ``video`` uint8
pixels ``[T, 3, F, H, W]`` (the model normalises them, on the training device),
``audio`` float32 ``[T, 1, n_mels, mel_frames]``, ``valid`` bool ``[T]``, ``label``
and ``index``; in test mode every field gains a leading view dimension ``V =
test_views * test_crops`` (temporal view ``v // test_crops``, crop ``v % test_crops``).
Audio-only manifests give no ``video``. Clip placement and augmentation come from
``avbert.data.clips`` and the crop boxes from ``avbert.data.pixels``, so this loader
and the DALI loader cut the same clips from the same record, with the same resize.
Frames are converted to RGB with swscale's fast (SIMD) conversion, not the exact one
DALI's CPU decoder applies (bilinear chroma, accurate rounding: 6 to 17 times the cost,
by CPU): the two loaders' crops agree within 2 grey levels on average.

A record that cannot be used (see ``probe.Reason``) is replaced by the next usable record
of the manifest, and counted: every sample carries ``skipped`` and
``skipped/<reason>`` counts, which ``ResumableLoader`` sums for the training metrics. A
short video (``avbert.data.clips``: fewer than ``T`` clips fit its window) is one such
record under ``data.short_videos: skip`` (reason ``short_video``); under ``pad`` it is
kept, and the sample counts it in ``padded`` (1) and ``padded_clips`` (its invalid clips).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from contextlib import contextmanager
from functools import partial
from typing import Callable, Optional, TypeVar

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, Dataset, default_collate

from avbert.data.audio import clip_logmel, spec_augment
from avbert.data.clips import ClipSpec, SamplePlan, ShortVideo, TooShort, plan_sample
from avbert.data.manifest import Manifest, MediaRecord
from avbert.data.pixels import batch_squares, clip_layout, crop_clips, stack_clips
from avbert.data.probe import ProbeError, Reason, check_record, rgb
from avbert.data.resumable import ResumableLoader, from_worker, is_counter
from avbert.data.resumable import collate as sampler_collate

MAX_SUBSTITUTES = 32
RUNTIME_REASONS = (Reason.MISSING, Reason.UNREADABLE, Reason.EMPTY, Reason.CHANGED, Reason.NO_VIDEO,
                   Reason.NO_AUDIO, Reason.ONE_FRAME, Reason.TOO_SHORT, Reason.SHORT_VIDEO, Reason.VFR,
                   Reason.DECODE_ERROR)
Loaded = TypeVar("Loaded")
SEEK_GAP_SECONDS = 2.0
"""Frames further apart than this are reached by seeking rather than decoding through."""


def _runs(indices: list[int], gap: int) -> list[list[int]]:
    runs = [[indices[0]]]
    for index in indices[1:]:
        (runs[-1].append(index) if index - runs[-1][-1] <= gap else runs.append([index]))
    return runs


def _decode_run(container, stream, run: list[int], fps: float, origin: int, seek: bool, budget: int,
                rgb_out: bool) -> dict:
    """Frames of ``run`` (sorted indices), decoding at most ``budget`` frames."""
    wanted, got = set(run), {}
    reformatter = VideoReformatter()  # one colour-conversion context for every frame of the run
    if seek:
        target = origin + int(math.floor(run[0] / fps / stream.time_base))
        container.seek(target, stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        index = int(round(float((frame.pts - origin) * stream.time_base) * fps)) if frame.pts is not None else -1
        if index in wanted:
            got[index] = rgb(reformatter, frame) if rgb_out else frame
        budget -= 1
        if index >= run[-1] or budget <= 0:
            break
    return got


def decode_frames(path: str, indices, fps: float, rgb_out: bool = True) -> dict:
    """RGB frames (uint8 ``[H, W, 3]``, full size; the decoded ``av.VideoFrame``
    without ``rgb_out``) by frame index, for every index in ``indices``. Work is
    bounded: a stretch is decoded at most twice (after a seek, then from the start when
    the seek landed late)."""
    needed = sorted(set(int(i) for i in np.asarray(indices).reshape(-1)))
    got: dict = {}
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        origin = stream.start_time or 0
        gap = int(SEEK_GAP_SECONDS * fps)
        for n, run in enumerate(_runs(needed, gap)):
            budget = run[-1] - run[0] + int(10 * fps) + 64
            got.update(_decode_run(container, stream, run, fps, origin, n > 0 or run[0] > gap, budget, rgb_out))
        missing = [i for i in needed if i not in got]
        if missing:
            container.seek(origin, stream=stream, backward=True, any_frame=False)
            got.update(_decode_run(container, stream, missing, fps, origin, False, missing[-1] + 64, rgb_out))
    missing = [i for i in needed if i not in got]
    if missing:
        raise ProbeError(Reason.DECODE_ERROR, f"{path}: frames {missing[:4]} do not decode")
    return got


def _as_prepared(frames, sample_rate: int) -> Optional[np.ndarray]:
    """float32 samples of decoded frames that are already what the preparer writes
    (mono 16-bit at ``sample_rate``), scaled as swresample converts s16 to float
    (x / 32768, exact); None when any frame is not."""
    chunks = []
    for frame in frames:
        if frame.format.name != "s16" or frame.layout.nb_channels != 1 or frame.sample_rate != sample_rate:
            return None
        chunks.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)


def decode_audio(path: Optional[str], sample_rate: int) -> torch.Tensor:
    """Mono float waveform ``[samples]`` at ``sample_rate`` (silence for no file).

    The preparer's FLAC (mono, 16-bit, at the configured rate) is only scaled to
    float: through swresample the same samples cost about 60% more. Anything else is
    resampled and downmixed."""
    if path is None:
        return torch.zeros(1)
    with av.open(path, metadata_errors="ignore") as container:
        frames = list(container.decode(audio=0))
    samples = _as_prepared(frames, sample_rate)
    if samples is None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in frames for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not samples.size:
        raise ProbeError(Reason.DECODE_ERROR, f"{path}: no audio samples")
    return torch.from_numpy(samples)


def skip_counts(reasons: list[str]) -> dict[str, int]:
    """``skipped`` and ``skipped/<reason>`` fields of one sample (every reason present,
    so samples collate)."""
    counts = {"skipped": len(reasons)}
    counts.update({f"skipped/{reason}": reasons.count(reason) for reason in RUNTIME_REASONS})
    return counts


def pad_counts(plan: SamplePlan) -> dict[str, int]:
    """``padded`` (1 for a short video kept under the ``pad`` policy) and ``padded_clips``
    (its clips masked invalid) of one sample; every view has the same valid clips."""
    invalid = int((~plan.views[0][0].valid).sum())
    return {"padded": int(invalid > 0), "padded_clips": invalid}


def plan_record(spec: ClipSpec, record: MediaRecord, train: bool, seed: int, epoch: int) -> SamplePlan:
    """``clips.plan_sample``, with a record it cannot plan as a ``ProbeError``:
    ``too_short`` (not one clip fits) or ``short_video`` (the ``skip`` policy)."""
    try:
        return plan_sample(spec, record, train, seed, epoch)
    except ShortVideo as err:
        raise ProbeError(Reason.SHORT_VIDEO, str(err)) from None
    except TooShort as err:
        raise ProbeError(Reason.TOO_SHORT, str(err)) from None


@contextmanager
def torch_threads(count: int):
    """Run torch ops in ``count`` threads for a while (then as before)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_usable(load: Callable[[int], Loaded], position: int, count: int, source) -> tuple[Loaded, list[str]]:
    """``load`` of record ``position``, or of the next record that can be used (the
    loaders' one substitution rule), with the reasons of the records passed over."""
    reasons = []
    for attempt in range(min(MAX_SUBSTITUTES, count)):
        try:
            return load((position + attempt) % count), reasons
        except ProbeError as err:
            reasons.append(err.reason)
    raise RuntimeError(f"{len(reasons)} consecutive records from position {position} of {source} "
                       f"cannot be used ({sorted(set(reasons))})")


def label_of(record: MediaRecord, manifest: Manifest) -> torch.Tensor:
    """int64 class index (-1: unknown), or a float multi-hot vector for multi-label sets."""
    if manifest.multilabel:
        target = torch.zeros(manifest.num_classes)
        target[list(record.labels or [])] = 1.0
        return target
    return torch.tensor(-1 if record.label is None else record.label, dtype=torch.int64)


class ManifestDataset(Dataset):
    """Samples of one manifest split, decoded with PyAV."""

    def __init__(self, manifest: Manifest, spec: ClipSpec, train: bool = True, seed: int = 0,
                 require_audio: bool = True):
        self.manifest, self.spec, self.train, self.seed = manifest, spec, train, seed
        self.records = manifest.records
        self.need_video = not manifest.audio_only
        self.require_audio = require_audio
        self.epoch = 0
        self._logmel = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def logmel(self):
        if self._logmel is None:
            self._logmel = self.spec.logmel()
        return self._logmel

    def _video(self, record: MediaRecord, plan: SamplePlan) -> torch.Tensor:
        """``[V, T, 3, F, S, S]``: frames decoded once, then each view's crop cut from
        them, every frame converted to RGB as its box is copied (``pixels.crop_clips``)."""
        frames = decode_frames(record.video, [clips.frames for clips, _ in plan.views], record.fps, rgb_out=False)
        convert = partial(rgb, VideoReformatter())
        squares = batch_squares(len(plan.views), self.spec)  # each view cropped straight into its place
        for place, (clips, crop) in zip(squares, plan.views):
            crop_clips([frames[int(i)] for i in clips.frames.reshape(-1)], crop, self.spec, convert, out=place)
        return clip_layout(squares, self.spec)

    def _audio(self, record: MediaRecord, plan: SamplePlan) -> torch.Tensor:
        """``[V, T, 1, n_mels, mel_frames]``, one patch per clip of every view."""
        waveform = decode_audio(record.audio, self.spec.sample_rate)
        patches: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for clips, _ in plan.views:
                if id(clips) not in patches:
                    patches[id(clips)] = clip_logmel(waveform, self.logmel, clips.starts,
                                                     clips.window_seconds, self.spec.mel_frames)
        per_view = [patches[id(clips)] for clips, _ in plan.views]
        out = per_view[0][None] if len(per_view) == 1 else torch.stack(per_view)
        if plan.mask_seed is not None:
            generator = torch.Generator().manual_seed(plan.mask_seed)
            out = spec_augment(out, generator, self.spec.spec_augment, self.spec.spec_augment)
        return out

    def load(self, position: int) -> dict:
        """The sample of record ``position``; ``ProbeError`` when it cannot be used."""
        record = self.records[position]
        check_record(record, self.need_video, self.require_audio)
        plan = plan_record(self.spec, record, self.train, self.seed, self.epoch)
        sample = {}
        try:
            if self.need_video:
                sample["video"] = self._video(record, plan)
            sample["audio"] = self._audio(record, plan)
        except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as err:
            raise ProbeError(Reason.DECODE_ERROR, f"{record.video}: {type(err).__name__}: {err}") from None
        sample["valid"] = torch.from_numpy(np.stack([clips.valid for clips, _ in plan.views]))
        if self.train:
            sample = {key: value[0] for key, value in sample.items()}
        sample["label"] = label_of(record, self.manifest)
        sample["index"] = torch.tensor(record.index, dtype=torch.int64)
        return {**sample, **pad_counts(plan)}

    def __getitem__(self, position: int) -> dict:
        with torch_threads(1):  # per-sample ops are small: waking a thread pool costs more
            sample, reasons = first_usable(self.load, position, len(self.records), self.manifest.path)
        return {**sample, **skip_counts(reasons)}


def _collate_large(samples: list[dict]) -> dict:
    if "video" not in samples[0]:
        return default_collate(samples)
    batch = default_collate([{key: value for key, value in s.items() if key != "video"} for s in samples])
    batch["video"] = stack_clips([s["video"] for s in samples])
    return batch


def collate(samples: list[dict]) -> dict:
    """``resumable.collate`` (small fields inline from a worker), with video batched
    channels-last as the crops are laid out (``pixels.stack_clips``): one plain copy of
    the crops, not a transposing one. ``torch.utils.data`` hands the batch from a worker
    to the training process in a shared-memory segment of its own; a pool of reused
    segments gained nothing measurable at the paper's clip size (docs/data.md)."""
    return sampler_collate(samples, _collate_large)


def worker_context():
    """Worker processes fork from a clean forkserver (preloaded with this module), never
    from the training process: forking a process that runs DALI, CUDA or OpenMP threads
    can leave a worker waiting forever on a lock some thread held."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])  # the main module, as spawn would
    return context


class PyAVLoader(ResumableLoader):
    """Endless, resumable, rank-sharded training batches of a ``ManifestDataset``; the
    epoch reaches the dataset so that augmentation follows ``(seed, epoch, index)``."""

    name = "pyav"

    def __init__(self, dataset: ManifestDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 0):
        dataset.seed = seed
        super().__init__(dataset, batch_size, rank=rank, world_size=world_size, seed=seed, num_workers=num_workers,
                         collate_fn=collate,
                         pin_memory=torch.cuda.is_available())

    def _start_epoch(self) -> None:
        self.dataset.epoch = self.epoch
        self.sampler.set_epoch(self.epoch, self.position * self.batch_size)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                            num_workers=self.num_workers, collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            multiprocessing_context=worker_context() if self.num_workers else None)
        self._iterator = iter(loader)


class PyAVEvalLoader:
    """One ordered pass over this rank's share of a split (test views, no drop):
    position ``rank, rank + world_size, ...``; substitutes are reported in ``index``."""

    name = "pyav"

    def __init__(self, dataset: ManifestDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        self.dataset = dataset
        positions = list(range(rank, len(dataset), world_size))
        self.loader = DataLoader(torch.utils.data.Subset(dataset, positions), batch_size=batch_size,
                                 num_workers=num_workers, collate_fn=collate,
                                 multiprocessing_context=worker_context() if num_workers else None)
        self.skipped: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in map(from_worker, self.loader):
            for key in [k for k in batch if is_counter(k)]:
                self.skipped[key] = self.skipped.get(key, 0) + int(batch.pop(key).sum())
            yield batch
