"""Clips per second of the manifest loaders and of their raw decoders, side by side.

    python tools/bench_data.py [--size 240 360] [--videos 24] [--batches 8] [--repeats 5] [--threads 2]

Generates VP9/WebM videos with FLAC audio at each ``--size`` (cached in
``--media-dir``), prepares them into a manifest, and times on the same files:

- ``dali raw``: a DALI pipeline (CPU decoder here) that only reads the bytes and decodes
  the loader's frames and audio (no resize, crop, log-mel or copy to torch);
- ``dali +resize``: the same, plus cutting and resizing each clip's crop box as the
  loader does on the CPU (``avbert.data.pixels``);
- ``dali loader``: ``DaliLoader``, the full training batch;
- ``pyav raw``, ``pyav +resize``, ``pyav loader``: the same three with PyAV, in
  ``--threads`` worker processes. The raw decoder converts whole frames to RGB (as
  DALI's decoder delivers them); the loader, and so ``+resize``, copies each frame's
  crop box out as it is converted and resizes the boxes (``pixels.crop_clips``).

Each run is repeated ``--repeats`` times, interleaved (a round runs every one once), over
``--batches`` batches after ``--warmup`` batches: clips per second (wall clock) and CPU
milliseconds per clip (this process, its threads and its worker processes). A shared
host disturbs them (a busy sibling hyperthread, evicted caches: the same work has been
seen to vary by 20% from one run to the next), so the ratios to the raw decoder are
taken within each round, between runs seconds apart, and the median over rounds is
reported with its range; the absolute figures are medians, with the best and every
repeat in the JSON. Prints a table and writes ``benchmarks/data.json`` with the machine
and the CPU time the hypervisor gave other guests meanwhile."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from functools import partial
from pathlib import Path


import numpy as np
import torch

from avbert.data.clips import ClipSpec, plan_sample
from avbert.data.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ClipSpec(clips=4, clip_seconds=2.5, frames_per_clip=32, frame_stride=2, crop_size=112,
                short_side=(128, 160), n_mels=80, mel_frames=128, hop_length=256, n_fft=512)
"""The paper's clip geometry: 32 frames at stride 2, 112 crops from a 128-160 short side,
80x128 log-mels, here from 16 kHz audio with 256-sample hops (the paper data preset's front
end is 44.1 kHz with 736-sample hops); four clips per video."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="videos generated (10 s, 320x240, 30 fps)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8,
                        help="timed batches per repeat; with --warmup, at most one epoch (videos // batch-size)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (they fill the prefetch queues)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved rounds of every run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="DALI threads and PyAV worker processes")
    parser.add_argument("--media-dir", default=str(Path(tempfile.gettempdir()) / "avbert-bench-media"),
                        help="where the generated media and their manifests go (default: the system's temporary "
                             "folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "data.json"))
    parser.add_argument("--clips", type=int, default=SPEC.clips,
                        help="clips per video (the paper pretrains on 10; --seconds must hold them 2.5 s apart)")
    parser.add_argument("--runs", nargs="+", metavar="RUN",
                        help="only these runs (each family's raw decoder is added: ratios are to it); "
                             "default: every run")
    parser.add_argument("--size", type=int, nargs="+", default=[240, 360],
                        help="frame heights (width is 4/3), each measured in turn: 240p, a copy pre-resized "
                             "for 128-160 px training scales, and 360p, a common rendition of web video")
    return parser.parse_args(argv)


def write_webm(path: Path, frames: np.ndarray, waveform: np.ndarray, fps: int, sample_rate: int) -> None:
    """VP9 at a web-like quality (CRF 32, a keyframe every 2 s) with an Opus track."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        audio = container.add_stream("libopus", rate=48000)
        audio.layout = "mono"
        video = container.add_stream("libvpx-vp9", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt, video.codec_context.gop_size = "yuv420p", 2 * fps
        video.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        resampled = np.interp(np.arange(len(waveform) * 3) / 3, np.arange(len(waveform)), waveform)
        for begin in range(0, len(resampled), 960):
            chunk = resampled[begin:begin + 960].astype(np.float32)[None]
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
            piece.sample_rate, piece.pts = 48000, begin
            container.mux(audio.encode(piece))
        container.mux(audio.encode())


def make_manifest(args, size: int) -> Path:
    """Generate the videos once (a generic tree of the synthetic dataset's videos, with
    little pixel noise so that they compress like real footage), and prepare them."""
    from avbert.data.datasets import Generic
    from avbert.data.prepare import PrepareOptions, prepare_dataset
    from avbert.data.synthetic import SyntheticSpec, generate_video

    folder = Path(args.media_dir) / f"{args.videos}x{args.seconds:g}s_{size}p"
    manifest = folder / "manifest.jsonl"
    if manifest.exists():
        return manifest
    fps = 30
    spec = SyntheticSpec(num_videos=args.videos, num_classes=4, clips=int(args.seconds), frames_per_clip=fps,
                         frame_size=size, fps=float(fps), pixel_noise=2.0)
    for index in range(args.videos):
        raw = generate_video(spec, index)
        frames = np.concatenate([raw.frames, raw.frames[:, :, : size // 3]], axis=2)
        write_webm(folder / "root" / "train" / f"c{raw.label}" / f"v{index:03d}.webm", frames, raw.waveform,
                   fps, raw.sample_rate)
    prepare_dataset(Generic(folder / "root"), manifest, PrepareOptions(audio_dir=str(folder / "audio")), workers=0)
    return manifest


def steal_seconds() -> float:
    """CPU time the hypervisor gave other guests, all cores (``/proc/stat``): when it
    grows during the run, the figures are noisy."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every live descendant: DALI threads
    and PyAV worker processes alike. Unlike wall time, it barely moves when other jobs
    share the machine."""
    ticks, parents = os.sysconf("SC_CLK_TCK"), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    family, grew = {os.getpid()}, True
    while grew:
        grown = {pid for pid, (ppid, _) in parents.items() if ppid in family} - family
        family |= grown
        grew = bool(grown)
    return sum(parents[pid][1] for pid in family if pid in parents) / ticks


def timed(make_iterator, batches: int, clips_per_batch: int, warmup: int) -> tuple[float, float]:
    """``(clips per second, CPU milliseconds per clip)`` over ``batches`` batches after
    ``warmup`` batches (which also fill the prefetch queues)."""
    iterator = make_iterator()
    for _ in range(warmup):
        next(iterator)
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        next(iterator)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    getattr(iterator, "close", lambda: None)()  # stop DALI threads before the next run
    clips = batches * clips_per_batch
    return clips / seconds, 1000 * cpu / clips


def dali_decode(manifest, args, resize: bool):
    """Read bytes and decode the loader's frames and audio; with ``resize``, also cut
    and resize each clip's crop box as the loader does on the CPU (its unavoidable pixel
    work, ``pixels.crop_clips``), and nothing else."""
    from nvidia.dali import fn, pipeline_def, types

    from avbert.data.dali_loader import DaliLoader
    from avbert.data.pixels import batch_squares, crop_clips
    from avbert.data.pyav_loader import torch_threads

    planner = DaliLoader(manifest, SPEC, args.batch_size, seed=0)

    def source(state):
        index = state["batch"] % planner.batches_per_epoch
        state["batch"] += 1
        state["planned"].append(planned := planner.plan_batch(0, index))  # run() hands batches over in order
        frames = [p.plan.views[0][0].frames.reshape(-1).astype(np.int32) for p in planned]
        return [p.video for p in planned], frames, [p.audio for p in planned]

    def make():
        state = {"batch": 0, "planned": deque()}

        @pipeline_def(batch_size=args.batch_size, num_threads=args.threads, device_id=None, exec_dynamic=True)
        def graph():
            video, frames, audio = fn.external_source(source=lambda: source(state), num_outputs=3, batch=True)
            decoded = fn.decoders.video(video, frames=frames, pad_mode="none")
            wave, _ = fn.decoders.audio(audio, sample_rate=SPEC.sample_rate, downmix=True, dtype=types.FLOAT)
            return decoded, wave

        pipe = graph()
        pipe.build()
        while True:
            outputs, batch = pipe.run(), state["planned"].popleft()
            if resize:
                with torch_threads(1):  # as the loader: each row cropped into its place in one batch
                    squares = batch_squares(len(batch), SPEC)
                    for row, planned in enumerate(batch):
                        crop_clips(np.asarray(outputs[0][row]), planned.plan.views[0][1], SPEC, out=squares[row])
            yield outputs
    return make


class DecodePyAV(torch.utils.data.Dataset):
    """Decode the loader's frames and audio of a record (with ``resize``, also cut and
    resize the crop box as the loader does); return nothing of size."""

    def __init__(self, manifest, resize: bool):
        self.records, self.resize, self.spec = manifest.records, resize, SPEC

    def __len__(self):
        return len(self.records)

    def __getitem__(self, position):
        from av.video.reformatter import VideoReformatter

        from avbert.data.pixels import crop_clips
        from avbert.data.probe import rgb
        from avbert.data.pyav_loader import decode_audio, decode_frames, torch_threads

        record = self.records[position]
        clips, crop = plan_sample(self.spec, record, True, 0, 0).views[0]
        frames = decode_frames(record.video, clips.frames, record.fps, rgb_out=not self.resize)
        if self.resize:  # as the loader: each frame's box copied as it is converted, then resized
            with torch_threads(1):
                crop_clips([frames[int(i)] for i in clips.frames.reshape(-1)], crop, self.spec,
                           partial(rgb, VideoReformatter()))
        audio = decode_audio(record.audio, self.spec.sample_rate)
        return torch.tensor(len(frames) + audio.numel())


def pyav_decode(manifest, args, resize: bool):
    from avbert.data.pyav_loader import worker_context

    return lambda: iter(torch.utils.data.DataLoader(DecodePyAV(manifest, resize), batch_size=args.batch_size,
                                                    num_workers=args.threads,
                                                    multiprocessing_context=worker_context()))


def dali_loader(manifest, args):
    from avbert.data.dali_loader import DaliLoader

    return lambda: iter(DaliLoader(manifest, SPEC, args.batch_size, seed=0, num_threads=args.threads))


def pyav_loader(manifest, args):
    from avbert.data.pyav_loader import ManifestDataset, PyAVLoader

    return lambda: iter(PyAVLoader(ManifestDataset(manifest, SPEC, seed=0), args.batch_size, seed=0,
                                   num_workers=args.threads))


def machine() -> dict:
    import av
    import nvidia.dali
    import torchaudio

    from avbert.data.build import gpu_count

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "gpus": gpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "dali": nvidia.dali.__version__, "pyav": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}


RUNS = {
    "dali raw": lambda m, a: dali_decode(m, a, resize=False),
    "dali +resize": lambda m, a: dali_decode(m, a, resize=True),
    "dali loader": dali_loader,
    "pyav raw": lambda m, a: pyav_decode(m, a, resize=False),
    "pyav +resize": lambda m, a: pyav_decode(m, a, resize=True),
    "pyav loader": pyav_loader,
}
"""``raw``: the decoders alone; ``+resize``: plus each clip's crop resized (pixel work a
loader cannot skip); ``loader``: the whole training batch."""


def measure(manifest, args, size: int) -> dict[str, list[tuple[float, float]]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    clips = args.batch_size * SPEC.clips
    wanted = set(args.runs or RUNS) | {name.split()[0] + " raw" for name in args.runs or ()}
    unknown = wanted - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown run(s) {sorted(unknown)}; runs: {', '.join(RUNS)}")
    chosen = {name: run for name, run in RUNS.items() if name in wanted}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
    makers = {name: run(manifest, args) for name, run in chosen.items()}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{size}p", total=args.repeats * len(makers))
        for round_ in range(args.repeats):  # interleaved, so drifts in machine load hit every run alike
            for name, make in makers.items():
                progress.update(task, description=f"{size}p round {round_ + 1}/{args.repeats}: {name}")
                results[name].append(timed(make, args.batches, clips, args.warmup))
                progress.advance(task)
    return results


def _paired(values: list[float], raws: list[float], invert: bool = False) -> dict:
    """Round-by-round ratios of a run to its raw decoder (``raw / run`` with
    ``invert``): their median and every one."""
    ratios = [(raw / value) if invert else (value / raw) for value, raw in zip(values, raws)]
    return {"median": statistics.median(ratios), "rounds": ratios}


def report(results: dict[str, list[tuple[float, float]]], args, manifest, size: int) -> dict:
    """Print the table of one source size; its figures for the JSON report."""
    from rich.console import Console
    from rich.table import Table

    rates = {name: [r for r, _ in values] for name, values in results.items()}
    costs = {name: [c for _, c in values] for name, values in results.items()}
    raw_of = {name: name.split()[0] + " raw" for name in results}
    speed = {name: _paired(rates[name], rates[raw_of[name]]) for name in results}
    efficiency = {name: _paired(costs[name], costs[raw_of[name]], invert=True) for name in results}
    table = Table(title=f"{size}p sources: {SPEC.frames_per_clip} frames at stride {SPEC.frame_stride}, "
                        f"{SPEC.crop_size}px crops + log-mel, batch {args.batch_size} x {SPEC.clips} clips, "
                        f"{args.threads} threads; medians over {args.repeats} rounds")
    for column in ("run", "clips/s", "vs raw (range)", "CPU ms/clip", "raw CPU / this (range)"):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=True)

    def ratio(paired: dict) -> str:
        return f"{paired['median']:.2f}x ({min(paired['rounds']):.2f}-{max(paired['rounds']):.2f})"

    for name in results:
        table.add_row(name, f"{statistics.median(rates[name]):.1f}", ratio(speed[name]),
                      f"{statistics.median(costs[name]):.1f}", ratio(efficiency[name]))
    console = Console()
    (console if console.is_terminal else Console(width=100)).print(table)
    return {"manifest": manifest.parent.name,  # the media set, under --media-dir (no machine's paths)
            "clips_per_s": {name: {"median": statistics.median(rates[name]), "best": max(rates[name]),
                                   "repeats": rates[name]} for name in results},
            "cpu_ms_per_clip": {name: {"median": statistics.median(costs[name]), "best": min(costs[name]),
                                       "repeats": costs[name]} for name in results},
            "throughput_vs_raw": speed, "cpu_efficiency_vs_raw": efficiency}


def main(argv=None) -> int:
    global SPEC
    args = parse_args(argv)
    SPEC = dataclasses.replace(SPEC, clips=args.clips)
    if args.warmup + args.batches > args.videos // args.batch_size:
        raise SystemExit("--warmup + --batches must fit in one epoch (videos // batch-size batches)")
    steal = steal_seconds()
    out = {"machine": machine(), "load_average": {"start": os.getloadavg()},
           "settings": {**{k: v for k, v in vars(args).items() if k not in ("media_dir", "out")}, "spec": vars(SPEC)},
           "sizes": {}}
    for size in args.size:
        manifest = load_manifest(make_manifest(args, size))
        out["sizes"][f"{size}p"] = report(measure(manifest, args, size), args, manifest.path, size)
    out["load_average"]["end"] = os.getloadavg()
    out["steal_seconds"] = steal_seconds() - steal
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
