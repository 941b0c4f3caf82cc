"""Turn a dataset on disk into a manifest: probe every file, extract its audio once.

``prepare_dataset`` lists a dataset's entries (``avbert.data.datasets``), and in a pool
of worker processes probes each file (``avbert.data.probe``), checks it is usable
(video and audio present, more than one frame, long enough, constant frame rate),
transcodes variable-frame-rate videos when asked, and writes its audio as mono FLAC.
Every file gets ``timeout`` seconds: a worker that runs over (or crashes inside FFmpeg)
is killed and replaced, and the file is reported, so one bad file never stalls a run.

Where the annotations name a segment of the file (Kinetics), the record gets a
``window``: ``window_seconds`` centred on the segment (the segment itself when None),
moved inside the file, or the whole file when the file is shorter. An entry whose
segment lies outside its file is skipped (``segment_outside``).

It writes the manifest, the class names beside it, and ``<name>.report.json`` listing
every skipped file with its reason, every kept file with a warning (an extension
that does not match the container, a missing audio track where the dataset does not
need one), and how many kept videos are short for the clip geometry ``geometry``
(``avbert.data.clips``: fewer than ``T`` clips fit their window), which a run then pads
or skips as ``data.short_videos`` says.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import av

from avbert.data.clips import ClipSpec, fitting_clips
from avbert.data.datasets import DatasetLayout, Entry
from avbert.data.manifest import MediaRecord, report_path, write_manifest
from avbert.data.probe import (
    MediaInfo,
    ProbeError,
    Reason,
    extract_audio,
    probe_media,
    transcode_cfr,
)

STARTUP_SECONDS = 120.0

NEEDS_AUDIO = {"kinetics700", "kinetics_sounds", "audioset", "charades", "generic"}
"""Datasets whose videos are useless without sound (audio-visual pretraining and
evaluation); UCF101 is a visual benchmark and keeps its many silent videos."""


@dataclass
class PrepareOptions:
    audio_dir: str
    sample_rate: int = 16000
    vfr: str = "skip"  # "skip" or "transcode"
    transcode_dir: Optional[str] = None
    min_seconds: float = 1.0
    require_audio: bool = True
    timeout: float = 300.0
    overwrite: bool = False
    window_seconds: Optional[float] = None  # the window around an annotated segment; None: the segment
    geometry: ClipSpec = field(default_factory=ClipSpec)  # what the report counts short videos against


@dataclass
class Outcome:
    """What became of one entry: a record, or the reason it was skipped."""

    id: str
    path: Optional[str]
    record: Optional[MediaRecord] = None
    reason: Optional[str] = None
    detail: str = ""
    flags: list[str] = field(default_factory=list)


@dataclass
class Job:
    entry: Entry
    label: Optional[int]
    labels: Optional[list[int]]
    audio_only: bool
    options: PrepareOptions


def _fresh(dst: str, src: str) -> bool:
    return os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src) and os.path.getsize(dst) > 0


def derived_path(folder: str, entry_id: str, suffix: str) -> str:
    """Where a file derived from an entry goes: 256 hashed subfolders keep any one
    folder small (Kinetics has 650k videos; parallel file systems dislike huge folders)."""
    bucket = hashlib.md5(entry_id.encode()).hexdigest()[:2]
    return os.path.join(folder, bucket, entry_id + suffix)


def _audio(job: Job, src: str, start: float) -> tuple[str, int]:
    """The extracted FLAC of ``src`` (reused when newer than the source) and its size."""
    dst = derived_path(job.options.audio_dir, job.entry.id, ".flac")
    if job.options.overwrite or not _fresh(dst, src):
        extract_audio(src, dst, job.options.sample_rate, start)
    return dst, os.path.getsize(dst)


def _constant_rate(job: Job, path: str, info: MediaInfo) -> tuple[str, MediaInfo]:
    """``path`` itself, or a constant-rate copy when the video's rate varies."""
    if not info.video.vfr:
        return path, info
    if job.options.vfr != "transcode":
        raise ProbeError(Reason.VFR, f"frame intervals vary (mean rate {info.video.fps:.3f} fps)")
    folder = job.options.transcode_dir or job.options.audio_dir.rstrip("/") + "_transcoded"
    dst = derived_path(folder, job.entry.id, ".webm")
    if job.options.overwrite or not _fresh(dst, path):
        transcode_cfr(path, dst, round(info.video.fps) or 25.0)
    return dst, probe_media(dst)


def _check_video(job: Job, info: MediaInfo) -> None:
    video = info.video
    if video is None:
        raise ProbeError(Reason.NO_VIDEO, "no video stream")
    if video.num_frames <= 1:
        raise ProbeError(Reason.ONE_FRAME, f"{video.num_frames} frame")
    if video.duration < job.options.min_seconds:
        raise ProbeError(Reason.TOO_SHORT, f"{video.duration:.2f}s < {job.options.min_seconds}s")


def _record(job: Job, info: Optional[MediaInfo], video_path: Optional[str],
            audio: Optional[tuple[str, int]], duration: float) -> MediaRecord:
    video = info.video if info else None
    return MediaRecord(
        id=job.entry.id, video=video_path, audio=audio[0] if audio else None, splits=job.entry.splits,
        duration=round(duration, 4), label=job.label, labels=job.labels,
        fps=video.fps if video else None, num_frames=video.num_frames if video else None,
        codec=video.codec if video else None, width=video.width if video else None,
        height=video.height if video else None, sample_rate=job.options.sample_rate if audio else None,
        video_bytes=info.size if video else None, audio_bytes=audio[1] if audio else None)


def record_window(segment: tuple[float, float], origin: float, duration: float,
                  length: Optional[float]) -> list[float]:
    """``[start, end]`` seconds from the first frame (media time ``origin``) of a file of
    ``duration`` seconds: ``length`` seconds centred on the annotated ``segment`` (media
    time; the segment itself for None), moved inside the file, the whole file when it is
    shorter. ``ProbeError`` when the segment lies outside the file."""
    first, last = segment[0] - origin, segment[1] - origin
    if last <= 0 or first >= duration:
        raise ProbeError(Reason.SEGMENT_OUTSIDE, f"the annotated segment {segment[0]:g}-{segment[1]:g} s lies "
                                                 f"outside the file's {duration:.2f} s")
    if length is None:
        start, end = max(0.0, first), min(duration, last)
    else:
        length = min(length, duration)
        start = min(max(0.0, (first + last - length) / 2), duration - length)
        end = start + length
    return [round(start, 4), round(end, 4)]


def _flac_seconds(path: str) -> float:
    with av.open(path) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base) if stream.duration else 0.0


def _prepare_audio_only(job: Job, info: MediaInfo) -> Outcome:
    if info.audio_codec is None:
        raise ProbeError(Reason.NO_AUDIO, "no audio stream")
    audio = _audio(job, info.path, 0.0)
    duration = _flac_seconds(audio[0]) or info.duration
    return Outcome(job.entry.id, info.path, _record(job, None, None, audio, duration), flags=list(info.flags))


def _prepare(job: Job) -> Outcome:
    if job.entry.path is None:
        raise ProbeError(Reason.MISSING, "named by the annotations, not found under the root")
    info = probe_media(job.entry.path)
    if job.audio_only:
        return _prepare_audio_only(job, info)
    _check_video(job, info)
    flags = list(info.flags)
    video_path, video_info = _constant_rate(job, info.path, info)
    if video_path != info.path:
        flags.append(f"transcoded to constant {video_info.video.fps:g} fps: {video_path}")
    audio = None
    if info.audio_codec is not None:
        audio = _audio(job, info.path, info.video.start)
    elif job.options.require_audio:
        raise ProbeError(Reason.NO_AUDIO, "no audio stream")
    else:
        flags.append("no audio stream (kept: this dataset does not need audio)")
    record = _record(job, video_info, video_path, audio, video_info.video.duration)
    if job.entry.segment is not None:
        record.window = record_window(job.entry.segment, info.video.start, record.duration, job.options.window_seconds)
    return Outcome(job.entry.id, info.path, record, flags=flags)


def prepare_one(job: Job) -> Outcome:
    """The outcome of one entry; never raises."""
    try:
        return _prepare(job)
    except ProbeError as err:
        return Outcome(job.entry.id, job.entry.path, reason=err.reason, detail=err.detail)
    except Exception as err:  # an FFmpeg failure no check anticipated: report, do not stop
        return Outcome(job.entry.id, job.entry.path, reason=Reason.CORRUPT, detail=f"{type(err).__name__}: {err}")


def _serve(function, connection) -> None:
    connection.send("ready")  # imports done: the time limit starts counting from here
    while (task := connection.recv()) is not None:
        connection.send(function(task))


class TimedPool:
    """Worker processes that each run ``function`` on one argument at a time, each over
    its own pipe. A call that runs past ``timeout`` seconds, or whose worker dies (FFmpeg
    can crash on hostile input), is given up: the worker is killed and replaced, and
    ``on_failure(argument, detail)`` stands in for its result."""

    def __init__(self, function: Callable, workers: int, timeout: float, on_failure: Callable):
        self.ctx = mp.get_context("spawn")
        self.function, self.timeout, self.on_failure = function, timeout, on_failure
        self.slots = [self._start() for _ in range(max(1, workers))]

    def _start(self) -> dict:
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=_serve, args=(self.function, theirs), daemon=True)
        process.start()
        theirs.close()
        if not ours.poll(STARTUP_SECONDS) or ours.recv() != "ready":
            process.kill()
            raise RuntimeError(f"a worker process did not start within {STARTUP_SECONDS}s")
        return {"process": process, "pipe": ours, "task": None, "since": 0.0}

    def _replace(self, index: int) -> None:
        self.slots[index]["process"].kill()
        self.slots[index]["process"].join()
        self.slots[index]["pipe"].close()
        self.slots[index] = self._start()

    def _collect(self, index: int) -> tuple[int, object]:
        slot = self.slots[index]
        key, argument = slot["task"]
        slot["task"] = None
        try:
            return key, slot["pipe"].recv()
        except (EOFError, OSError):
            detail = f"worker died (exit code {slot['process'].exitcode})"
        if time.monotonic() - slot["since"] > self.timeout:
            detail = f"no result within {self.timeout:g}s"
        self._replace(index)
        return key, self.on_failure(argument, detail)

    def run(self, arguments: list) -> Iterable[tuple[int, object]]:
        """``(position, result)`` for every argument, in completion order."""
        pending = list(enumerate(arguments))[::-1]
        while pending or any(slot["task"] for slot in self.slots):
            for slot in self.slots:
                if slot["task"] is None and pending:
                    slot["task"], slot["since"] = pending.pop(), time.monotonic()
                    slot["pipe"].send(slot["task"][1])
            busy = {slot["pipe"]: i for i, slot in enumerate(self.slots) if slot["task"]}
            for connection in mp.connection.wait(list(busy), timeout=0.2):
                yield self._collect(busy[connection])
            for index, slot in enumerate(self.slots):
                if slot["task"] and time.monotonic() - slot["since"] > self.timeout:
                    slot["process"].kill()  # its pipe now reads EOF: collected as a failure
                    yield self._collect(index)

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot["pipe"].send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot["process"].join(timeout=5)
            if slot["process"].is_alive():
                slot["process"].kill()


def timed_out(job: Job, detail: str) -> Outcome:
    reason = Reason.TIMEOUT if detail.startswith("no result") else Reason.CORRUPT
    return Outcome(job.entry.id, job.entry.path, reason=reason, detail=detail)


def make_jobs(layout: DatasetLayout, options: PrepareOptions) -> tuple[list[Job], list[str]]:
    """One job per entry, with class names turned into indices."""
    classes = layout.classes()
    index = {name: i for i, name in enumerate(classes)}
    jobs = []
    for entry in layout.entries():
        known = [index[name] for name in entry.labels if name in index]
        label = None if layout.multilabel or not known else known[0]
        labels = sorted(set(known)) if layout.multilabel else None
        jobs.append(Job(entry, label, labels, layout.audio_only, options))
    return jobs, classes


def run_jobs(jobs: list[Job], workers: int, timeout: float,
             progress: Optional[Callable[[Outcome], None]] = None) -> list[Outcome]:
    """Outcomes in job order; ``workers=0`` runs inline (no time limit)."""
    outcomes: list[Optional[Outcome]] = [None] * len(jobs)
    if workers == 0:
        results: Iterable = ((i, prepare_one(job)) for i, job in enumerate(jobs))
    else:
        pool = TimedPool(prepare_one, min(workers, max(1, len(jobs))), timeout, timed_out)
        results = pool.run(jobs)
    try:
        for position, outcome in results:
            outcomes[position] = outcome
            if progress:
                progress(outcome)
    finally:
        if workers:
            pool.close()
    return outcomes


SHORT_EXAMPLES = 20


def short_videos(records: list[MediaRecord], geometry: ClipSpec) -> dict:
    """How many ``records`` are short for ``geometry`` (fewer than ``T`` clips fit their
    window), the first few of them, and what a run does with them."""
    short = [(r, fitting_clips(geometry, r)) for r in records]
    short = [(r, fits) for r, fits in short if fits < geometry.clips]
    return {"count": len(short), "clips": geometry.clips, "clip_seconds": geometry.clip_seconds,
            "policy": "data.short_videos: pad keeps them with invalid clips masked, skip leaves them out",
            "examples": [{"id": r.id, "clips": fits, "seconds": round(_window_seconds(r), 3)}
                         for r, fits in short[:SHORT_EXAMPLES]]}


def _window_seconds(record: MediaRecord) -> float:
    start, end = record.window or (0.0, record.duration)
    return min(end, record.duration) - start


def write_report(outcomes: list[Outcome], manifest: Path, meta: dict,
                 geometry: Optional[ClipSpec] = None) -> dict:
    """``<name>.report.json``: counts, every skipped file, every warning, and the short
    videos for ``geometry`` (the paper's clips by default)."""
    skipped = [o for o in outcomes if o.reason]
    counts: dict[str, int] = {}
    for outcome in skipped:
        counts[outcome.reason] = counts.get(outcome.reason, 0) + 1
    kept = [o.record for o in outcomes if o.record]
    report = {**meta, "manifest": str(manifest), "total": len(outcomes),
              "kept": len(outcomes) - len(skipped), "skipped_by_reason": counts,
              "short_videos": short_videos(kept, geometry or ClipSpec()),
              "skipped": [{"id": o.id, "path": o.path, "reason": o.reason, "detail": o.detail} for o in skipped],
              "warnings": [{"id": o.id, "path": o.path, "flags": o.flags}
                           for o in outcomes if o.flags and not o.reason]}
    text = json.dumps(report, indent=1)
    report_path(manifest).write_text(text)
    return json.loads(text)  # what the file says (tuples of the options as lists)


def prepare_dataset(layout: DatasetLayout, manifest: str | Path, options: PrepareOptions,
                    workers: int = 1, progress: Optional[Callable[[Outcome], None]] = None,
                    limit: Optional[int] = None, on_start: Optional[Callable[[int], None]] = None) -> dict:
    """Probe and extract every entry of ``layout``; write manifest, classes and report.
    ``on_start`` hears the number of files, ``progress`` every outcome."""
    manifest = Path(manifest)
    jobs, classes = make_jobs(layout, options)
    jobs = jobs[:limit] if limit else jobs
    if on_start:
        on_start(len(jobs))
    outcomes = run_jobs(jobs, workers, options.timeout, progress)
    write_manifest([o.record for o in outcomes if o.record], manifest, classes)
    meta = {"dataset": layout.name, "root": str(layout.root), "classes": len(classes),
            "options": asdict(options)}
    return write_report(outcomes, manifest, meta, options.geometry)
