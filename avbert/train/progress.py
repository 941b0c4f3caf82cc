"""Progress display: a rich progress bar on a terminal, log lines otherwise.

Batch jobs write to files, where a redrawn bar is noise; there every log step
becomes one plain line (``step 100/1000 loss 2.314 lr 1.00e-04 ...``).
Only the main rank reports.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

logger = logging.getLogger("avbert.train")

SHOWN = ("loss", "cpp/acc", "lr", "grad_norm", "perf/clips_per_s")


def format_metrics(record: dict) -> str:
    parts = []
    for key in SHOWN:
        value = record.get(key)
        if value is None:
            continue
        text = f"{value:.2e}" if key == "lr" else f"{value:.4g}"
        parts.append(f"{key.split('/')[-1] if key.startswith('perf/') else key} {text}")
    return " ".join(parts)


class ProgressReporter:
    """Shows training progress; call ``advance`` every step and ``log`` every log step."""

    def __init__(self, total: int, start: int, enabled: bool, use_bar: Optional[bool] = None):
        self.total, self.enabled = total, enabled
        self.use_bar = enabled and (sys.stderr.isatty() if use_bar is None else use_bar)
        self._bar = self._task = None
        if self.use_bar:
            self._start_bar(start)

    def _start_bar(self, start: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, completed=start, info="")

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def log(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        line = format_metrics(record)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=line)
        else:
            logger.info("step %d/%d %s", step, self.total, line)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            logger.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
