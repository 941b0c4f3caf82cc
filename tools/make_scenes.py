"""Write the synthetic "scenes" dataset as real .mp4 files (H.264 + AAC) in the generic layout.

    python tools/make_scenes.py ROOT [--num-videos 512] [--seed 0]
    python tools/prepare_data.py generic --root ROOT --out manifests/scenes.jsonl

Writes ``ROOT/<train|val>/class<k>/scene_<index>.mp4`` (every fifth video in "val"),
2 s each: 4 clips of 0.5 s, 40x40 pixels at 8 fps, 16 kHz mono sound. Each clip's event
sets both its picture (grating orientation and drift) and its sound (noise band and
burst rate); every nuisance is redrawn per clip (see avbert/data/synthetic_scenes.py).
ROOT must be empty or new: videos left from another seed would join the dataset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from avbert.data.synthetic_scenes import ScenesSpec, write_generic_tree


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write the dataset into (empty or new)")
    parser.add_argument("--num-videos", type=int, default=ScenesSpec.num_videos, help="videos to write")
    parser.add_argument("--seed", type=int, default=ScenesSpec.seed, help="dataset seed")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    root = Path(args.root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        console.print(f"[red]{root} is not an empty folder[/red]: choose a new one (old videos would join the dataset)")
        return 2
    try:
        spec = ScenesSpec(num_videos=args.num_videos, seed=args.seed)
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("writing scenes", total=spec.num_videos)
        paths = write_generic_tree(spec, root, progress=lambda _: bar.advance(task))
    seconds = time.perf_counter() - started
    val = len(spec.indices("val"))
    console.print(f"wrote {len(paths)} videos ({len(paths) - val} train, {val} val) under {root} "
                  f"in {seconds:.1f}s\nnext: python tools/prepare_data.py generic --root {root} "
                  f"--out <manifest>.jsonl")
    return 0 if paths else 1


if __name__ == "__main__":
    sys.exit(main())
