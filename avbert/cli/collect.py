"""The paper's tables from the run directories, with the paper's numbers beside ours (on the
tasks the paper reports; not on the synthetic set) and chance beside top-1.

    python tools/collect.py                          # every experiment under runs/
    python tools/collect.py sharing negative_sampling --runs-dir runs --out reports
    python tools/collect.py experiments/smoke.yaml --format csv --format json

For each experiment, writes <out>/<experiment>/table.md, table.csv, table.json and
figures (params_vs_top1.png for the sharing grid, curves.png), and prints the table.
--format picks what is written (repeat it; default: markdown, csv, json and png).
Missing, pending, running and failed cells are rows with their state.
"""

from __future__ import annotations

import argparse
import sys

from avbert.results.collect import FORMATS, collect


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="experiment names or YAML files (default: every experiment under --runs-dir)")
    parser.add_argument("--format", action="append", choices=FORMATS, dest="formats",
                        help="output to write; repeat for several (default: all)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument("--runs-dir", default="runs", help="where the runs are (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tables = collect(args.experiments, args.runs_dir, args.out, args.formats or FORMATS,
                         print_tables=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"collect: {err}", file=sys.stderr)
        return 1
    if not tables:
        print(f"collect: no experiments under {args.runs_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
