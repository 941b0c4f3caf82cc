"""Command line: ``python -m avbert.train <stage> --config FILE [key.path=value ...]``.

Each stage is a subcommand sharing ``--config`` and the overrides; the
subcommand sets ``stage``. Rank and world size come from the environment
(``torchrun``, or the Slurm launcher's exported variables), so the same
command runs as one process or as one rank of many. A configuration error, or a
manifest that cannot be read (``avbert.data.manifest.ManifestError``, naming the file
and line), exits with code 2 and its message; a non-finite loss, or a checkpoint that
cannot be resumed or written (``avbert.train.checkpoint.CheckpointError``: another
ZeRO stage, damaged files, a full disk), exits with code 1 and its message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from avbert.config import ConfigError, load_config

STAGE_HELP = {
    "pretrain": "self-supervised pretraining (MEP + CPP)",
    "finetune": "fine-tune a pretrained model on a labelled set, then evaluate it",
    "linear": "linear evaluation: train a head on the frozen pretrained model, then evaluate it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avbert.train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, text in STAGE_HELP.items():
        sub = commands.add_parser(stage, help=text, description=text)
        sub.add_argument("--config", help="YAML config file (defaults when omitted)")
        sub.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, [*args.overrides, f"stage={args.stage}"])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from avbert.data.manifest import ManifestError
    from avbert.train import run_stage
    from avbert.train.checkpoint import CheckpointError
    from avbert.train.engine import NonFiniteLossError

    try:
        outcome = run_stage(cfg)
    except ManifestError as err:
        print(f"manifest error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        _close_process_group()
    if os.environ.get("RANK", "0") == "0":
        logging.getLogger("avbert.train").info("%s at step %d/%d: %s", outcome.status, outcome.step,
                                               outcome.total_steps, outcome.run_dir)
    return 0


def _close_process_group() -> None:
    """Leave the process group before exit, so no rank aborts while tearing it down."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
