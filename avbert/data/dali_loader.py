"""The production manifest loader: NVIDIA DALI decodes video and computes log-mels.
``avbert.data.build`` chooses it (``choose_loader``) where DALI is installed and its
decoder reads every codec of the manifest; only then is this module imported.

Python plans each batch (which records, which frames, which crop, from
``avbert.data.clips``) and hands DALI the encoded bytes through an external source; the
DALI graph then

- decodes the planned frames of every clip with ``fn.decoders.video`` (NVDEC on a GPU,
  ``device="mixed"``; FFmpeg on CPU, which reads only VP9, VP8 and MJPEG) and, on a GPU,
  resizes, crops and mirrors them, as uint8 pixels (the model normalises them on the
  training device);
- decodes the extracted FLAC with ``fn.decoders.audio``, cuts one window per clip and
  computes ``fn.spectrogram -> fn.mel_filter_bank(htk, unnormalised)`` and the log form
  of ``data.log_mel`` (``fn.to_decibels``, or ``log(1e-6 + x)``), the suite's log-mel
  (``avbert.data.audio``), cropped or padded to ``mel_frames``.

SpecAugment masks are drawn per sample by ``avbert.data.audio.spec_augment`` from the
plan's seed, exactly as the PyAV loader draws them, and applied inside the graph. On a
GPU all per-sample work happens in DALI, ahead of the training step (prefetch), and the
training thread only copies the finished batch into torch. Without a GPU the loader's
crop thread crops the decoded frames of the next batch while the caller works on this
one (``avbert.data.pixels``, the PyAV loader's resize too): torch's uint8 resize costs a
third of DALI's CPU resize.

A record whose files fail the cheap checks (``probe.check_record``) or cannot be read is
replaced by the next usable record while planning. When DALI fails on a batch, each of
its videos is decoded alone to find the culprits; they are remembered, the batch is
planned again without them and the pipeline is rebuilt, so the run goes on and every
batch keeps its shape. Skips are counted per reason in ``skipped``, with the short videos
kept and padded (``padded``, ``padded_clips``), as the PyAV loader counts them.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math

from avbert.data.audio import (
    LN_OFFSET,
    LOGMEL_MEAN,
    LOGMEL_STD,
    SILENCE_DB,
    SILENCE_LN,
    spec_augment,
)
from avbert.data.clips import ClipSpec, SamplePlan
from avbert.data.manifest import Manifest, MediaRecord
from avbert.data.pixels import batch_squares, clip_layout, crop_box, crop_clips
from avbert.data.probe import ProbeError, Reason, check_record, read_bytes, silent_flac
from avbert.data.pyav_loader import (
    first_usable,
    label_of,
    pad_counts,
    plan_record,
    skip_counts,
    torch_threads,
)
from avbert.data.resumable import epoch_order, rank_shard

logger = logging.getLogger("avbert.data")

@dataclass
class Planned:
    """One video of a batch: its record, clips and crops, encoded bytes, and the reasons
    of the records skipped to reach it."""

    position: int
    record: MediaRecord
    plan: SamplePlan
    video: Optional[np.ndarray]
    audio: np.ndarray
    reasons: list[str]


def resize_crop(decoded, region, side: int):
    """The box of ``region`` (``crop_region``) resized to ``side`` pixels in the graph
    (the default on a GPU), with the filter of the CPU path (``avbert.data.pixels``: bilinear, antialiased).
    Only the box is resized, never the whole frame."""
    return fn.resize(decoded, roi_start=region[0:2], roi_end=region[2:4], roi_relative=False,
                     size=[side, side], interp_type=types.INTERP_LINEAR, antialias=True)


def _video_branch(inputs, spec: ClipSpec, regions: int, gpu: bool):
    """With no ``regions`` (the default without a GPU), the decoded frames ``[T * F, H,
    W, 3]`` of each row: ``pixels.crop_clips`` crops them as the batch is handed over.
    Otherwise uint8 ``[T, 3, F, S, S]`` per crop region (stacked to ``[C, ...]`` for
    several): one resize (which also mirrors) and one transpose."""
    video, frames, *boxes = inputs
    decoded = fn.decoders.video(video, frames=frames, pad_mode="none", device="mixed" if gpu else "cpu")
    if not regions:
        return decoded
    side, views = spec.crop_size, []
    for region in boxes[:regions]:
        square = resize_crop(decoded, region, side)  # [T * F, S, S, 3]
        clips = fn.reshape(square, shape=[spec.clips, spec.frames_per_clip, side, side, 3], layout="")
        views.append(fn.transpose(clips, perm=[0, 4, 1, 2, 3]))
    return views[0] if regions == 1 else fn.stack(*views)


def crop_region(crop, height: int, width: int, side: int) -> np.ndarray:
    """``[y0, x0, y1, x1]``: ``pixels.crop_box`` as DALI's region of interest. A mirrored
    crop has ``x0 > x1``: DALI's resize reads a reversed region mirrored, so the flip
    costs no pass of its own."""
    y0, x0, y1, x1 = crop_box(crop, height, width, side)
    if crop.flip:
        x0, x1 = x1, x0
    return np.array([y0, x0, y1, x1], dtype=np.float32)


def _audio_branch(inputs, spec: ClipSpec):
    """FLAC -> model-input log-mel ``[T, n_mels, mel_frames]``, times the SpecAugment
    keep-mask when one is fed."""
    audio, starts, length, *keep = inputs
    wave, _ = fn.decoders.audio(audio, sample_rate=spec.sample_rate, downmix=True, dtype=types.FLOAT)
    window = torch.hann_window(spec.n_fft).tolist()  # periodic, as torchaudio
    spectra = []
    for t in range(spec.clips):
        piece = fn.slice(wave, start=starts[t:t + 1], shape=length, axes=[0],
                         out_of_bounds_policy="pad", fill_values=0.0)
        spectra.append(fn.spectrogram(piece, nfft=spec.n_fft, window_length=spec.n_fft,
                                      window_step=spec.hop_length, window_fn=window,
                                      center_windows=True, reflect_padding=True, power=2))
    mel = fn.mel_filter_bank(fn.stack(*spectra), sample_rate=spec.sample_rate, nfilter=spec.n_mels,
                             freq_low=0.0, freq_high=spec.sample_rate / 2, mel_formula="htk",
                             normalize=False)
    if spec.log_mel == "ln":  # the released form, unscaled
        logmel = fn.slice(dali_math.log(mel + LN_OFFSET), start=[0], shape=[spec.mel_frames], axes=[2],
                          out_of_bounds_policy="pad", fill_values=SILENCE_LN)
    else:
        db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=SILENCE_DB)
        db = fn.slice(db, start=[0], shape=[spec.mel_frames], axes=[2], out_of_bounds_policy="pad",
                      fill_values=SILENCE_DB)
        logmel = (db - LOGMEL_MEAN) / LOGMEL_STD
    return logmel * keep[0] if keep else logmel


def build_pipeline(spec: ClipSpec, source, batch_size: int, regions: int, need_video: bool, masked: bool,
                   device_id: Optional[int], num_threads: int, prefetch: int = 2):
    """The DALI graph fed by ``source`` (a callable returning one list per input), with
    ``regions`` crop regions per row resized in the graph (0: decoded frames out)."""
    video_inputs = 2 + regions if need_video else 0

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=prefetch, exec_dynamic=True)
    def graph():
        inputs = fn.external_source(source=source, num_outputs=video_inputs + 3 + masked, batch=True)
        outputs = []
        if need_video:
            outputs.append(_video_branch(inputs[:video_inputs], spec, regions, device_id is not None))
        outputs.append(_audio_branch(inputs[video_inputs:], spec))
        return tuple(outputs)

    pipe = graph()
    pipe.build()
    return pipe


def keep_mask(spec: ClipSpec, seed: int) -> np.ndarray:
    """float ``[T, n_mels, mel_frames]``: 0 where ``audio.spec_augment`` masks, else 1."""
    with torch_threads(1):
        ones = torch.ones(spec.clips, spec.n_mels, spec.mel_frames)
        generator = torch.Generator().manual_seed(seed)
        return spec_augment(ones, generator, spec.spec_augment, spec.spec_augment).numpy()


def feed_rows(planned: list[Planned], spec: ClipSpec, crops: int, need_video: bool, masked: bool,
              regions: bool) -> tuple:
    """External-source inputs of a batch: one row per temporal view of every video (with
    its ``crops`` crop regions when the graph resizes them, ``regions``)."""
    columns: list[list] = [[] for _ in range((2 + crops * regions if need_video else 0) + 3 + masked)]
    for item in planned:
        for first in range(0, len(item.plan.views), crops):
            views = item.plan.views[first:first + crops]
            clips, crop = views[0]
            row = []
            if need_video:
                row += [item.video, clips.frames.reshape(-1).astype(np.int32)]
                row += [crop_region(c, item.record.height, item.record.width, spec.crop_size)
                        for _, c in views] if regions else []
            starts = np.round(clips.starts * spec.sample_rate).astype(np.int32)
            row += [item.audio, starts, np.array([int(round(clips.window_seconds * spec.sample_rate))], np.int32)]
            row += [keep_mask(spec, item.plan.mask_seed)] if masked else []
            for column, value in zip(columns, row):
                column.append(value)
    return tuple(columns)


def to_torch(tensor_list, device_id: Optional[int] = None) -> torch.Tensor:
    """A dense DALI batch as a torch tensor of its dtype (a copy: DALI reuses its
    buffers); GPU outputs land on ``cuda:device_id``, the pipeline's GPU."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    dense = tensor_list.as_tensor()
    gpu = type(tensor_list).__name__.endswith("GPU")
    device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if gpu else None)
    return out


class DaliLoader:
    """Batches of a manifest split decoded by DALI, in the suite's batch format.

    Training (``train=True``) is an endless, rank-sharded stream in the order of
    ``avbert.data.resumable`` (the PyAV loader's order), resumable through ``state_dict``;
    evaluation is one ordered pass over this rank's share (``len`` batches, the last one
    possibly smaller) with ``test_views * test_crops`` views per video.

    ``graph_resize`` resizes the crops in the DALI graph (default: on a GPU only);
    otherwise the training thread crops the decoded frames (``avbert.data.pixels``).
    """

    name = "dali"

    def __init__(self, manifest: Manifest, spec: ClipSpec, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, train: bool = True, require_audio: bool = True,
                 device_id: Optional[int] = None, num_threads: int = 2, prefetch: int = 2,
                 graph_resize: Optional[bool] = None):
        self.manifest, self.spec, self.batch_size = manifest, spec, batch_size
        self.rank, self.world_size, self.seed, self.train = rank, world_size, seed, train
        self.records, self.need_video = manifest.records, not manifest.audio_only
        self.require_audio, self.device_id = require_audio, device_id
        self.num_threads, self.prefetch = num_threads, prefetch
        self.crops = 1 if train else spec.test_crops
        self.graph_resize = device_id is not None if graph_resize is None else graph_resize
        if not self.graph_resize and device_id is not None:
            raise ValueError("graph_resize=False needs device_id=None: frames decoded on a GPU are resized there")
        self.regions = self.crops if self.graph_resize else 0  # crop regions the graph resizes
        self.masked = train and spec.spec_augment > 0
        shard = len(self.records) // world_size if train else len(range(rank, len(self.records), world_size))
        self.batches_per_epoch = shard // batch_size if train else -(-shard // batch_size)
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(self.records)} records over {world_size} rank(s) do not fill one batch "
                             f"of {batch_size}")
        self.epoch, self.position = 0, 0
        self.skipped: dict[str, int] = {}
        self.bad: dict[int, str] = {}  # positions DALI failed on, found at run time
        self._pipe, self._cursor, self._inflight, self._orders = None, (0, 0), deque(), {}
        self._cropper: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None  # the next batch, being cropped (CPU path)

    # planning -----------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        """This rank's record positions of ``epoch`` (the current two epochs are kept)."""
        if epoch not in self._orders:
            if self.train:
                order = epoch_order(len(self.records), epoch, self.seed)
                shard = rank_shard(order, self.rank, self.world_size).tolist()
            else:
                shard = list(range(self.rank, len(self.records), self.world_size))
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1} | {epoch: shard}
        return self._orders[epoch]

    def _plan_one(self, position: int, epoch: int) -> Planned:
        record = self.records[position]
        if position in self.bad:
            raise ProbeError(self.bad[position], "failed in DALI earlier")
        check_record(record, self.need_video, self.require_audio)
        plan = plan_record(self.spec, record, self.train, self.seed, epoch)
        video = read_bytes(record.video) if self.need_video else None
        audio = read_bytes(record.audio) if record.audio else silent_flac(self.spec.sample_rate)
        return Planned(position, record, plan, video, audio, [])

    def _plan_sample(self, position: int, epoch: int) -> Planned:
        """The sample at ``position``, or the next usable record (the PyAV loader's rule)."""
        planned, reasons = first_usable(lambda p: self._plan_one(p, epoch), position, len(self.records),
                                        self.manifest.path)
        planned.reasons = reasons
        return planned

    def plan_batch(self, epoch: int, index: int) -> list[Planned]:
        positions = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return [self._plan_sample(p, epoch) for p in positions]

    def _source(self):
        epoch, index = self._cursor
        if index >= self.batches_per_epoch:
            if not self.train:
                raise StopIteration
            epoch, index = epoch + 1, 0
        planned = self.plan_batch(epoch, index)
        self._cursor = (epoch, index + 1)
        self._inflight.append(planned)
        return feed_rows(planned, self.spec, self.crops, self.need_video, self.masked, self.graph_resize)

    # running ------------------------------------------------------------------------
    def _max_rows(self) -> int:
        return self.batch_size * (1 if self.train else self.spec.test_views)

    def _start(self) -> None:
        self._cursor, self._inflight = (self.epoch, self.position), deque()
        loader = weakref.ref(self)  # no cycle: a dropped loader frees its pipeline and threads at once
        self._pipe = build_pipeline(self.spec, lambda: loader()._source(), self._max_rows(), self.regions,
                                    self.need_video, self.masked, self.device_id, self.num_threads, self.prefetch)

    def _decodes(self, planned: Planned) -> bool:
        rows = feed_rows([planned], self.spec, self.crops, self.need_video, self.masked, self.graph_resize)
        try:
            pipe = build_pipeline(self.spec, lambda: rows, len(rows[0]), self.regions, self.need_video,
                                  self.masked, self.device_id, 1, prefetch=1)
            pipe.run()
            return True
        except RuntimeError:
            return False

    def _recover(self, error: Exception) -> None:
        """Find the videos DALI fails on among the batches in flight, remember them, and
        restart the pipeline at the current batch."""
        culprits = [p for batch in self._inflight for p in batch if not self._decodes(p)]
        if not culprits:
            raise error
        for planned in culprits:
            self.bad[planned.position] = Reason.DECODE_ERROR
            logger.warning("data: skipping record %s (DALI cannot decode %s)", planned.record.id,
                           " or ".join(planned.record.paths()))
        self._pipe = None

    def _run(self) -> tuple[tuple, list[Planned]]:
        for _ in range(4 * self.batch_size + 4):
            if self._pipe is None:
                self._start()
            try:
                outputs = self._pipe.run()
                return outputs, self._inflight.popleft()
            except RuntimeError as error:
                self._recover(error)
        raise RuntimeError("DALI keeps failing on the same batch")

    def _assemble(self, outputs: tuple, planned: list[Planned]) -> dict:
        spec, count = self.spec, len(planned)
        temporal, views = (1, 1) if self.train else (spec.test_views, spec.test_views * spec.test_crops)
        batch = {}
        if self.need_video:
            video = to_torch(outputs[0], self.device_id) if self.graph_resize else self._crop(outputs[0], planned)
            # [B * temporal, (C,) T, 3, F, S, S]
            batch["video"] = video if self.train else video.view(count, views, *video.shape[-5:])
        audio = to_torch(outputs[-1]).unsqueeze(-3)  # [B * temporal, T, 1, M, N]
        if not self.train:
            audio = audio.view(count, temporal, 1, *audio.shape[1:]).expand(-1, -1, self.crops, -1, -1, -1, -1)
            audio = audio.reshape(count, views, *audio.shape[3:])
        batch["audio"] = audio
        valid = torch.from_numpy(np.stack([np.stack([c.valid for c, _ in p.plan.views]) for p in planned]))
        batch["valid"] = valid[:, 0] if self.train else valid
        batch["label"] = torch.stack([label_of(p.record, self.manifest) for p in planned])
        batch["index"] = torch.tensor([p.record.index for p in planned], dtype=torch.int64)
        return batch

    def _crop(self, decoded, planned: list[Planned]) -> torch.Tensor:
        """CPU rows of decoded frames -> ``[rows, (C,) T, 3, F, S, S]``: every crop of
        every row cut, resized and mirrored by ``pixels.crop_clips`` (a view of DALI's
        buffer is read, not copied) straight into its place in the batch, laid out
        channels-last as ``pixels.stack_clips`` lays it out. Runs in the crop thread
        (``_fetch``)."""
        temporal = len(decoded) // len(planned)
        squares = batch_squares(len(decoded), self.spec, *(() if self.crops == 1 else (self.crops,)))
        places = squares.view(len(decoded), self.crops, *squares.shape[-4:])
        for row in range(len(decoded)):
            frames = np.asarray(decoded[row])
            views = planned[row // temporal].plan.views
            first = (row % temporal) * self.crops
            for place, (_, crop) in zip(places[row], views[first:first + self.crops]):
                crop_clips(frames, crop, self.spec, out=place)
        return clip_layout(squares, self.spec)

    def _count(self, planned: list[Planned]) -> None:
        for planned_sample in planned:
            counts = {**skip_counts(planned_sample.reasons), **pad_counts(planned_sample.plan)}
            for key, value in counts.items():
                self.skipped[key] = self.skipped.get(key, 0) + value

    def _fetch(self) -> tuple[dict, list[Planned]]:
        outputs, planned = self._run()
        return self._assemble(outputs, planned), planned

    def _crop_thread(self) -> ThreadPoolExecutor:
        """One thread that runs and crops the next batch on the CPU path while the
        caller trains on this one, so the crops overlap the step as DALI's own work
        does. Under OpenMP (torch's CPU builds) its torch thread count is its own: one,
        as DALI's threads hold the other cores."""
        if self._cropper is None:
            openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
            self._cropper = ThreadPoolExecutor(1, thread_name_prefix="avbert-dali-crop",
                                               initializer=(lambda: torch.set_num_threads(1)) if openmp else None)
        return self._cropper

    def _drop_pending(self) -> None:
        """Wait for and discard the batch being prefetched (its position is replanned)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # it is run again, and fails again, when asked for
                pass

    def next_batch(self) -> dict:
        if self.train and self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self.graph_resize:
            batch, planned = self._fetch()
        else:
            pending, self._pending = self._pending, None
            batch, planned = (pending or self._crop_thread().submit(self._fetch)).result()
        self._count(planned)
        self.position += 1
        if not self.graph_resize and (self.train or self.position < self.batches_per_epoch):
            self._pending = self._crop_thread().submit(self._fetch)
        return batch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        if self.train:
            return self
        return self._one_pass()

    def _one_pass(self):
        self._drop_pending()
        self.epoch, self.position, self._pipe = 0, 0, None
        while self.position < self.batches_per_epoch:
            yield self.next_batch()
        self._pipe = None

    def __next__(self) -> dict:
        return self.next_batch()

    def close(self) -> None:
        """Stop the pipeline's threads now (a new batch request starts it again)."""
        self._drop_pending()
        self._pipe, self._inflight = None, deque()

    def state_dict(self) -> dict:
        """JSON-friendly position: the next batch is batch ``position`` of ``epoch``."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(f"loader state was saved with world size {state['world_size']}, "
                             f"this run has {self.world_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = {key: int(value) for key, value in state.get("skipped", {}).items()}
        self._drop_pending()
        self._pipe = None
