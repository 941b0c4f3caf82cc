"""Parameter counts of the paper's sharing table at the paper preset, and of the clip
CNNs of both model presets.

    python tools/params.py                         # rich tables: sharing, then the CNNs
    python tools/params.py --format json           # {variant: {"transformers", "cnns", "total"}}
    python tools/params.py --cnns --format json    # {preset: {"visual", "audio", "projections", "cnns"}}
"""

from __future__ import annotations

import argparse
import json
import sys

from avbert.config import ModelConfig
from avbert.models import (
    PAPER_TRANSFORMER_PARAMS_M,
    SHARING_VARIANTS,
    AVBert,
    count_cnn_parameters,
    count_parameters,
    sharing_variant,
)

PRESETS = ("paper", "tiny")


def sharing_table(base: ModelConfig) -> dict[str, dict[str, int]]:
    return {name: count_parameters(AVBert(sharing_variant(base, name))) for name in SHARING_VARIANTS}


def cnn_table() -> dict[str, dict[str, int]]:
    """The clip CNNs of every model preset (they do not depend on the sharing)."""
    return {name: count_cnn_parameters(AVBert(ModelConfig.from_preset(name))) for name in PRESETS}


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


def print_cnn_table(counts: dict[str, dict[str, int]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Clip CNNs by model preset (projections: linear + LayerNorm)")
    for column in ("preset", "visual CNN", "audio CNN", "projections", "CNNs"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for name, row in counts.items():
        table.add_row(name, *(f"{row[key]:,}" for key in ("visual", "audio", "projections", "cnns")))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--preset", choices=PRESETS, default="paper")
    parser.add_argument("--cnns", action="store_true", help="only the CNN counts of every preset")
    args = parser.parse_args(argv)
    if args.cnns:
        cnns = cnn_table()
        print(json.dumps(cnns)) if args.format == "json" else print_cnn_table(cnns)
        return 0
    counts = sharing_table(ModelConfig.from_preset(args.preset))
    if args.format == "json":
        print(json.dumps(counts))
    else:
        print_table(counts)
        print_cnn_table(cnn_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
