"""Figures where a picture says more than the table.

* ``params_vs_top1.png`` (sharing grid): Transformer parameters (log scale)
  against top-1, ours and the paper's, one labelled point per variant;
* ``curves.png``: the training loss of every cell against the step, one panel
  per stage.

Figures are drawn with the Agg canvas (no global pyplot state) and saved
without software metadata, so the same runs give byte-identical PNG files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from avbert.results.columns import Table
from avbert.results.runs import StageRun

DPI = 100


def _figure(width: float, height: float, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * panels, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, i + 1) for i in range(panels)]
    return figure, axes


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def plot_params_vs_top1(table: Table, path: Path) -> Optional[Path]:
    """Parameters against top-1 for the sharing grid; None when nothing is plottable."""
    ours = [(r["params_m"], r["top1"], r["variant"]) for r in table.rows
            if r.get("params_m") is not None and r.get("top1") is not None]
    paper = [(r["paper_params_m"], r["paper_top1"], r["variant"]) for r in table.rows
             if r.get("paper_params_m") is not None and r.get("paper_top1") is not None]
    if not ours and not paper:
        return None
    figure, (ax,) = _figure(5.5, 4.0)
    for points, marker, label in ((ours, "o", "ours"), (paper, "s", "paper")):
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("Transformer parameters (M)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(figure, path)


def _loss_points(run: StageRun) -> tuple[list[float], list[float]]:
    points = [(line.step, line.get("loss")) for line in run.metric_lines
              if line.step is not None and line.get("loss") is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(title: str, runs: dict[tuple[str, str], StageRun], path: Path) -> Optional[Path]:
    """Loss against step for every cell, one panel per stage that has logged anything."""
    curves = {key: _loss_points(run) for key, run in runs.items()}
    shown = list(dict.fromkeys(stage for (_, stage), (steps, _) in curves.items() if steps))
    if not shown:
        return None
    figure, axes = _figure(4.5, 3.5, len(shown))
    for ax, stage in zip(axes, shown):
        for (variant, cell_stage), (steps, losses) in curves.items():
            if cell_stage == stage and steps:
                ax.plot(steps, losses, label=variant, linewidth=1.2)
        ax.set_title(f"{title}: {stage}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(figure, path)


def draw_plots(table: Table, runs: dict[tuple[str, str], StageRun], out_dir: Path) -> list[Path]:
    """Every figure that applies to the table's layout and has data; a figure an
    earlier collection drew that no longer has data is removed."""
    figures = {"curves.png": lambda path: plot_training_curves(table.experiment, runs, path)}
    if table.layout == "sharing":
        figures["params_vs_top1.png"] = lambda path: plot_params_vs_top1(table, path)
    drawn = []
    for name in sorted(figures):
        path = out_dir / name
        if figures[name](path) is not None:
            drawn.append(path)
        elif path.exists():
            path.unlink()
    return drawn
