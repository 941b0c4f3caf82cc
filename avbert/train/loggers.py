"""Where a run's log lines go besides ``metrics.jsonl``: TensorBoard and Weights & Biases.

``train.loggers`` names the sinks: ``jsonl`` (always; ``metrics.jsonl`` is the run's record,
what ``collect`` and ``tools/status.py`` read), ``tensorboard`` and ``wandb``. Every
numeric value of every line goes to each sink under the same name, at the line's step; the
resolved config goes in as hyperparameters.

A resumed run continues what the killed attempt wrote: ``metrics.jsonl`` drops its lines
past the checkpoint the run resumes from and the run logs them again. TensorBoard is given
that step as ``purge_step``, so its reader discards the killed attempt's events past it and
shows each step once, from the resumed run; the event files stay in
``<run_dir>/tensorboard``. W&B keeps one run id per run directory (``<run_dir>/wandb.json``, with the last step
sent) and resumes that run; W&B keeps one value per step, so the steps the killed attempt
sent past its checkpoint keep the killed attempt's values there. W&B runs offline (files under ``<run_dir>/wandb``, ``wandb sync`` uploads
them) unless ``WANDB_MODE`` says otherwise.

The sinks are optional extras: a missing package is a clear error naming the pip extra.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

from avbert.rundir import read_json, write_json

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}
WANDB_STATE = "wandb.json"  # the run's W&B id and the last step sent to it


class MissingExtra(RuntimeError):
    """A logger was asked for whose package is not installed."""


def _require(name: str):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        import wandb

        return wandb
    except ImportError as err:
        raise MissingExtra(f"train.loggers asks for {name!r}, which is not installed: pip install "
                           f"'avbert-suite[{EXTRAS[name]}]' (or pip install {EXTRAS[name]}); {err}") from None


def scalars(record: dict) -> dict[str, float]:
    """The numeric values of a log line, without its step."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardSink:
    def __init__(self, run_dir: Path, config: dict, resume_step: Optional[int]):
        writer_cls = _require("tensorboard")
        purge = resume_step + 1 if resume_step else None
        self.writer = writer_cls(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if not resume_step:
            self.writer.add_text("config", "```\n" + _yaml(config) + "\n```", 0)

    def write(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict, resume_step: Optional[int]):
        wandb = _require("wandb")
        self.state_file = run_dir / WANDB_STATE
        state = read_json(self.state_file) or {"id": uuid.uuid4().hex[:16], "last_step": -1}
        self.run_id, self.last_step = str(state["id"]), int(state.get("last_step", -1))
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(id=self.run_id, resume="allow", dir=str(run_dir), config=config,
                              name=str(config.get("name") or run_dir.name),
                              mode=os.environ.get("WANDB_MODE", "offline"))
        self._save()

    def _save(self) -> None:
        write_json(self.state_file, {"id": self.run_id, "last_step": self.last_step})

    def write(self, record: dict) -> None:
        step = int(record.get("step", 0))
        if step <= self.last_step:
            return  # logged by an earlier attempt: W&B keeps one value per step
        self.run.log(scalars(record), step=step)
        self.last_step = step
        self._save()

    def close(self) -> None:
        self.run.finish()


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def build_sinks(loggers, run_dir: str | Path, config: dict, resume_step: Optional[int] = None) -> list:
    """The sinks ``loggers`` names besides ``jsonl``, for the main rank of a run in ``run_dir``."""
    run_dir = Path(run_dir)
    made = []
    for name in loggers:
        if name == "tensorboard":
            made.append(TensorBoardSink(run_dir, config, resume_step))
        elif name == "wandb":
            made.append(WandbSink(run_dir, config, resume_step))
    return made
