"""Parameter counts of the paper's sharing table at the paper preset.

    python tools/params.py                # a rich table
    python tools/params.py --format json  # {variant: {"transformers", "cnns", "total"}}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avbert.config import ModelConfig  # noqa: E402
from avbert.models import PAPER_TRANSFORMER_PARAMS_M, SHARING_VARIANTS, AVBert, count_parameters, sharing_variant  # noqa: E402


def sharing_table(base: ModelConfig) -> dict[str, dict[str, int]]:
    return {name: count_parameters(AVBert(sharing_variant(base, name))) for name in SHARING_VARIANTS}


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def print_table(counts: dict[str, dict[str, int]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Parameters at the paper preset (width 768, 6 layers, rank 128)")
    for column in ("variant", "layers", "modalities", "Transformers", "paper", "CNNs", "total"):
        table.add_column(column, justify="left" if column in ("variant", "layers", "modalities") else "right")
    for name, row in counts.items():
        layers, modalities = SHARING_VARIANTS[name]
        table.add_row(
            name, layers, modalities, _millions(row["transformers"]), f"{PAPER_TRANSFORMER_PARAMS_M[name]}M",
            _millions(row["cnns"]), _millions(row["total"]),
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper")
    args = parser.parse_args(argv)
    counts = sharing_table(ModelConfig.from_preset(args.preset))
    if args.format == "json":
        print(json.dumps(counts))
    else:
        print_table(counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
