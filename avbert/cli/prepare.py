"""Write the manifest of a dataset: probe every file, extract its audio once.

    python tools/prepare_data.py kinetics700 --root /data/k700 --out manifests/k700.jsonl \\
        [--workers 16] [--sample-rate 16000] [--vfr skip|transcode] [--window-seconds 30]

Writes MANIFEST (JSON Lines, one record per usable video), MANIFEST's
``<name>.classes.txt`` and ``<name>.report.json`` (every skipped file with its reason,
and how many kept videos are short: fewer than ``--clips`` clips (``--clip-seconds``
apart, ``--frames-per-clip`` frames at ``--frame-stride``; the paper's by default) fit
their window). Audio goes to ``--audio-dir`` (default: ``<name>_audio`` beside
the manifest). Running it again reuses audio files that are newer than their video.

Kinetics-700 records get a window of ``--window-seconds`` (default: clips x clip
seconds, the paper's 30 s) centred on the annotated segment of each source video;
Kinetics-Sounds records get the annotated segment itself. A malformed annotation row
stops the run with its file, line and fault (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from avbert.config import DataConfig
from avbert.data.clips import ClipSpec
from avbert.data.datasets import LAYOUTS, AnnotationError, layout
from avbert.data.prepare import NEEDS_AUDIO, PrepareOptions, prepare_dataset

WINDOWED = {"kinetics700"}
"""Layouts whose records get a window of --window-seconds around the annotated segment
(the paper pretrains on 30 s of each Kinetics-700 video); other annotated layouts keep
the segment itself."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(LAYOUTS))
    parser.add_argument("--root", required=True, help="the dataset's folder as downloaded")
    parser.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (0: no pool, no per-file time limit)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="rate of the extracted FLAC audio")
    parser.add_argument("--audio-dir", help="where the FLAC files go (default: <out stem>_audio)")
    parser.add_argument("--vfr", choices=("skip", "transcode"), default="skip",
                        help="variable-frame-rate videos: report and skip, or re-encode at a constant rate")
    parser.add_argument("--transcode-dir", help="where re-encoded videos go (default: <audio dir>_transcoded)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shorter videos are skipped")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per file")
    parser.add_argument("--classes", help="class list file (kinetics_sounds: replaces the built-in list)")
    parser.add_argument("--audio", choices=("auto", "require", "optional"), default="auto",
                        help="skip videos without sound (auto: unless the dataset is visual-only, UCF101)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract audio even when up to date")
    parser.add_argument("--limit", type=int, help="prepare only the first N entries (a quick look)")
    paper = DataConfig()
    parser.add_argument("--clips", type=int, default=paper.clips,
                        help="clips per video (data.clips) the report counts short videos against")
    parser.add_argument("--clip-seconds", type=float, default=paper.clip_seconds,
                        help="seconds per clip (data.clip_seconds) the report counts short videos against")
    parser.add_argument("--frames-per-clip", type=int, default=paper.frames_per_clip,
                        help="frames per clip (data.frames_per_clip) the report counts short videos against")
    parser.add_argument("--frame-stride", type=int, default=paper.frame_stride,
                        help="frame stride (data.frame_stride) the report counts short videos against")
    parser.add_argument("--window-seconds", type=float,
                        help="kinetics700: seconds of each source video around its annotated segment "
                             "(default: clips x clip seconds; 0: the segment itself)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> PrepareOptions:
    out = Path(args.out)
    audio_dir = os.path.abspath(args.audio_dir or str(out.with_name(out.stem + "_audio")))
    require = args.dataset in NEEDS_AUDIO if args.audio == "auto" else args.audio == "require"
    transcode_dir = os.path.abspath(args.transcode_dir) if args.transcode_dir else None
    geometry = ClipSpec.from_config(DataConfig(clips=args.clips, clip_seconds=args.clip_seconds,
                                               frames_per_clip=args.frames_per_clip, frame_stride=args.frame_stride))
    window = args.window_seconds
    if window is None and args.dataset in WINDOWED:
        window = args.clips * args.clip_seconds
    return PrepareOptions(audio_dir=audio_dir, sample_rate=args.sample_rate, vfr=args.vfr,
                          transcode_dir=transcode_dir, min_seconds=args.min_seconds,
                          require_audio=require, timeout=args.timeout, overwrite=args.overwrite,
                          window_seconds=window or None, geometry=geometry)


def summary(report: dict) -> Table:
    table = Table(title=f"{report['dataset']}: {report['kept']} of {report['total']} kept")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("kept", str(report["kept"]))
    for reason, count in sorted(report["skipped_by_reason"].items()):
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("kept with a warning", str(len(report["warnings"])))
    short = report["short_videos"]
    table.add_row(f"kept, short (< {short['clips']} clips of {short['clip_seconds']:g} s)", str(short["count"]))
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    dataset = layout(args.dataset, args.root, args.classes)
    options = options_from(args)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("skipped {task.fields[skipped]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"listing {args.dataset}", total=None, skipped=0)
        skipped = [0]

        def start(total: int) -> None:
            progress.update(task, total=total, description=f"probing {args.dataset}")

        def advance(outcome) -> None:
            skipped[0] += outcome.reason is not None
            progress.update(task, advance=1, skipped=skipped[0])

        try:  # annotation rows are all read and checked before any file is probed
            report = prepare_dataset(dataset, args.out, options, workers=args.workers,
                                     progress=advance, limit=args.limit, on_start=start)
        except AnnotationError as err:
            progress.stop()
            console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            return 2
    console.print(summary(report))
    if report["short_videos"]["count"]:
        console.print("short videos: a run pads them (masked clips) or skips them, as data.short_videos says",
                      highlight=False)
    console.print(f"manifest: {args.out}\nreport:   {Path(args.out).with_name(Path(args.out).stem + '.report.json')}")
    return 0 if report["kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
