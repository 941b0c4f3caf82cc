"""Write the manifest of a dataset: probe every file, extract its audio once.

    python tools/prepare_data.py kinetics700 --root /data/k700 --out manifests/k700.jsonl \\
        [--workers 16] [--sample-rate 16000] [--vfr skip|transcode]

Writes MANIFEST (JSON Lines, one record per usable video), MANIFEST's
``<name>.classes.txt`` and ``<name>.report.json`` (every skipped file with its reason).
Audio goes to ``--audio-dir`` (default: ``<name>_audio`` beside the manifest). Running it
again reuses audio files that are newer than their video.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,  # noqa: E402
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table  # noqa: E402

from avbert.data.datasets import LAYOUTS, layout  # noqa: E402
from avbert.data.prepare import NEEDS_AUDIO, PrepareOptions, prepare_dataset  # noqa: E402


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
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> PrepareOptions:
    out = Path(args.out)
    audio_dir = os.path.abspath(args.audio_dir or str(out.with_name(out.stem + "_audio")))
    require = args.dataset in NEEDS_AUDIO if args.audio == "auto" else args.audio == "require"
    transcode_dir = os.path.abspath(args.transcode_dir) if args.transcode_dir else None
    return PrepareOptions(audio_dir=audio_dir, sample_rate=args.sample_rate, vfr=args.vfr,
                          transcode_dir=transcode_dir, min_seconds=args.min_seconds,
                          require_audio=require, timeout=args.timeout, overwrite=args.overwrite)


def summary(report: dict) -> Table:
    table = Table(title=f"{report['dataset']}: {report['kept']} of {report['total']} kept")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("kept", str(report["kept"]))
    for reason, count in sorted(report["skipped_by_reason"].items()):
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("kept with a warning", str(len(report["warnings"])))
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

        report = prepare_dataset(dataset, args.out, options, workers=args.workers,
                                 progress=advance, limit=args.limit, on_start=start)
    console.print(summary(report))
    console.print(f"manifest: {args.out}\nreport:   {Path(args.out).with_name(Path(args.out).stem + '.report.json')}")
    return 0 if report["kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
