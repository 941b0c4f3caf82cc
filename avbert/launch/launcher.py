"""``python tools/launch.py EXPERIMENT.yaml``: validate, plan, submit and record an experiment.

Everything is checked before anything is submitted: the experiment file,
every cell's resolved config, the data manifests, the profile and the
resources each stage asks of it. A bad file exits with code 2 and a message
naming the file, the key path and what is allowed. Then each cell is
submitted, skipped (completed, queued or running; failed unless
``--retry-failed``) or blocked (its pretraining cell cannot run), and
``<runs_dir>/<experiment>/index.json`` records the jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from avbert.config import ConfigError, to_dict
from avbert.launch import index as idx
from avbert.launch.actions import PlannedCell, make_plan, plan_table
from avbert.launch.profile import Profile, load_profile
from avbert.launch.grid import Cell, expand, select
from avbert.launch.spec import SCALES, Experiment, read_experiment
from avbert.launch.status import gather, read_run_status
from avbert.launch.submit import Submitted, local_error, local_slots, start_local, submit_slurm
from avbert.rundir import CONFIG, EVAL, EvalRecord, RunStatus, read_json, read_yaml_mapping
from avbert.rundir.index import read_index, write_index

DEFAULT_PROFILE = idx.REPO_ROOT / "slurm" / "profiles" / "local.yaml"
SQUEUE_HINT = "squeue -o '%.14i %.45j %.10T %.10M %R'"


@dataclass
class Launch:
    """A checked launch: nothing has been written or submitted yet."""

    experiment: Experiment
    profile: Profile
    scale: str
    cluster: str
    cluster_note: str
    cells: list[Cell]
    selected: set[str]
    exp_dir: Path
    runs_dir: Path
    commit: Optional[str]
    overrides: list[str]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avbert-launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="experiment file, e.g. experiments/sharing_ablation.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for every cell, e.g. train.steps=200 optim.lr=0.0005")
    parser.add_argument("--cluster", choices=("slurm", "local"),
                        help="where to run (default: Slurm when sbatch is on PATH, else this machine)")
    parser.add_argument("--profile", default=str(DEFAULT_PROFILE),
                        help="cluster profile file (default: the suite's slurm/profiles/local.yaml)")
    parser.add_argument("--scale", choices=SCALES, help="paper or tiny (default: the experiment's default_scale)")
    parser.add_argument("--only", nargs="+", default=[], metavar="CELL",
                        help="cells to launch: experiment/variant/stage, variant/stage or variant (globs allowed)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing")
    parser.add_argument("--retry-failed", action="store_true", help="submit failed cells again")
    parser.add_argument("--rerun-changed", action="store_true",
                        help="run again, from scratch, cells whose config changed since they ran")
    parser.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    return parser


def choose_cluster(requested: Optional[str]) -> tuple[str, str]:
    """Slurm when sbatch is on PATH, else local; says which and why."""
    sbatch = shutil.which("sbatch")
    if requested == "slurm" and sbatch is None:
        raise ConfigError("sbatch is not on PATH; use --cluster local to run on this machine", "command line",
                          "--cluster")
    if requested == "local":
        return "local", "running on this machine (submitit LocalExecutor), independent cells side by side"
    if sbatch:
        return "slurm", f"submitting to Slurm (sbatch: {sbatch})"
    return "local", "sbatch is not on PATH: running on this machine (submitit LocalExecutor)"


def check_local(cells: list[Cell], experiment: Experiment, scale: str) -> None:
    for cell in cells:
        if cell.resources.nodes > 1:
            key = f"scales.{scale}.stages.{cell.stage_key}.resources.nodes"
            raise ConfigError(f"{cell.name} asks {cell.resources.nodes} nodes; --cluster local runs on one",
                              experiment.source, key)


def check_runs_dir(exp_dir: Path, scale: str) -> None:
    """A run directory holds one scale of an experiment."""
    held = read_index(exp_dir).get("scale")
    if held and held != scale:
        raise ConfigError(f"{exp_dir} holds {held}-scale runs; launch the {scale} scale with another --runs-dir",
                          "command line", "--scale")


def prepare(args: argparse.Namespace) -> Launch:
    """Read and check everything; raises ConfigError, writes nothing."""
    experiment = read_experiment(args.experiment)
    profile = load_profile(args.profile)
    scale = args.scale or experiment.spec.default_scale
    cluster, note = choose_cluster(args.cluster)
    commit = idx.git_commit()
    # A dry run plans without the data: missing manifests are listed, not refused (a launch refuses them).
    cells = expand(experiment, scale, profile, args.runs_dir, commit, check_files=not args.dry_run,
                   overrides=tuple(args.overrides))
    if cluster == "local" and (args.cluster == "local" or not args.dry_run):
        check_local(cells, experiment, scale)  # a plan may be made on a machine without Slurm
    selected = {cell.name for cell in select(cells, args.only, "command line")}
    exp_dir = idx.experiment_dir(args.runs_dir, experiment.name)
    check_runs_dir(exp_dir, scale)
    runs_dir = Path(args.runs_dir).expanduser().resolve()
    return Launch(experiment, profile, scale, cluster, note, cells, selected, exp_dir, runs_dir, commit,
                  list(args.overrides))


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        launch = prepare(args)
    except ConfigError as err:
        errors.print(f"[bold red]error:[/] {escape(str(err))}")
        return 2
    index = read_index(launch.exp_dir)
    idx.describe_cells(index, launch.experiment, launch.cells, launch.scale)
    statuses = gather(index, [cell.name for cell in launch.cells])
    changed = changed_cells(launch.cells)
    plan = make_plan(launch.cells, statuses, args.retry_failed, launch.selected, changed, args.rerun_changed)
    _print_header(console, launch)
    if args.dry_run:
        for path in missing_manifests(launch.cells):
            console.print(f"[yellow]manifest not found:[/] {escape(str(path))} (write it with tools/prepare_data.py; "
                          "a launch refuses until it exists)")
    title = f"{launch.experiment.name} at {launch.scale} scale: plan"
    console.print(plan_table(plan, f"{title} (dry run)" if args.dry_run else title))
    if args.dry_run:
        return 0
    asked = time.time()
    for name, status in statuses.items():
        index["cells"][name].update(state=status.state, state_unix=asked)
    todo = [p for p in plan if p.submit]
    if not todo:
        write_index(launch.exp_dir, index)
        console.print("nothing to submit")
        return 0
    for planned in todo:
        if planned.cell.name in changed:
            set_aside(planned.cell.run_dir)
    code_dir = idx.snapshot_code(launch.exp_dir, launch.commit)
    _record_launch(index, launch, code_dir, argv, todo)
    record = _recorder(index, launch, code_dir)
    if launch.cluster == "slurm":
        return _launch_slurm(console, errors, launch, plan, statuses, code_dir, record)
    return _launch_local(console, launch, plan, index, code_dir, record)


def missing_manifests(cells: list[Cell]) -> list[Path]:
    """The data manifests the cells read that do not exist (yet)."""
    paths = {Path(c.config.data.manifest).expanduser().resolve() for c in cells
             if c.config.data.source == "manifest" and c.config.data.manifest}
    return sorted(path for path in paths if not path.is_file())


def flat_items(data, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(flat_items(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


RECORDED_ONLY = ("git_commit",)  # differs between launches of the same config


def changed_cells(cells: list[Cell]) -> dict[str, list[str]]:
    """Cells whose run directory recorded a resolved config (``config.yaml``) that differs
    from the one this launch resolves, with the dotted keys that differ."""
    changed = {}
    for cell in cells:
        recorded = read_yaml_mapping(cell.run_dir / CONFIG)
        if recorded is None:
            continue
        old, new = flat_items(recorded), flat_items(to_dict(cell.config))
        keys = sorted(k for k in old.keys() | new.keys()
                      if k not in RECORDED_ONLY and _plain(old.get(k)) != _plain(new.get(k)))
        if keys:
            changed[cell.name] = keys
    return changed


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def set_aside(run_dir: Path) -> Path:
    """Move a run directory out of the way of a rerun: ``<stage>.replaced-<time>`` beside it."""
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target


def _record_launch(index: dict, launch: Launch, code_dir: Path, argv: Optional[list[str]],
                   todo: list[PlannedCell]) -> None:
    index["launches"].append({"time": idx.now_text(), "cluster": launch.cluster, "profile": launch.profile.path,
                              "scale": launch.scale, "code_dir": str(code_dir), "git_commit": launch.commit,
                              "argv": list(argv if argv is not None else sys.argv[1:]),
                              "overrides": launch.overrides,
                              "submitted": [p.cell.name for p in todo]})
    write_index(launch.exp_dir, index)


def _print_header(console: Console, launch: Launch) -> None:
    console.print(f"[bold]{launch.experiment.name}[/] ({launch.experiment.source}) at [bold]{launch.scale}[/] scale, "
                  f"profile [bold]{launch.profile.name}[/] ({launch.profile.path})")
    console.print(f"{launch.cluster_note}; runs in {launch.exp_dir}")
    if launch.overrides:
        console.print(f"overrides for every cell: {escape(' '.join(launch.overrides))}")


def _recorder(index: dict, launch: Launch, code_dir: Path):
    def record(sub: Submitted) -> None:
        idx.record_submission(index, sub.cell, launch.cluster, sub.job_id, sub.log, code_dir, launch.commit,
                              sub.job_name)
        write_index(launch.exp_dir, index)
    return record


def _launch_slurm(console: Console, errors: Console, launch: Launch, plan: list[PlannedCell], statuses: dict,
                  code_dir: Path, record) -> int:
    live = {name: status.job_id for name, status in statuses.items() if status.live and status.job_id}
    try:
        submitted = submit_slurm(plan, launch.profile, launch.exp_dir / "logs", code_dir, live, record)
    except Exception as err:  # sbatch refused a job: what went out before is in the index
        errors.print(f"[bold red]submission failed:[/] {escape(str(err))}")
        return 1
    table = Table(title=f"{launch.experiment.name}: submitted {len(submitted)} cells", title_justify="left")
    for column in ("cell", "job id", "job name", "waits for", "log"):
        table.add_column(column)
    waits = {p.cell.name: p.wait_for for p in plan}
    for sub in submitted:
        after = waits.get(sub.cell.name)
        table.add_row(f"{sub.cell.variant}/{sub.cell.stage}", sub.job_id, escape(sub.job_name),
                      after.split("/", 1)[1] if after else "", sub.log)
    console.print(table)
    runs = "" if launch.runs_dir == Path("runs").resolve() else f" --runs-dir {launch.runs_dir}"
    console.print(f"watch with: {SQUEUE_HINT}   or   python tools/status.py {launch.experiment.name}{runs}")
    return 0


def _launch_local(console: Console, launch: Launch, plan: list[PlannedCell], index: dict, code_dir: Path,
                  record) -> int:
    """Run the cells on this machine, as many side by side as its cores allow for the
    profile's job shape (``submit.local_slots``; a cell that asks for GPUs runs alone), each
    once the cell it starts from has completed."""
    todo = [planned for planned in plan if planned.submit]
    slots = local_slots(launch.profile)
    running: dict[str, tuple[PlannedCell, object]] = {}
    finished: set[str] = set()
    failed: set[str] = set()

    def finish(name: str, error: Optional[str]) -> None:
        entry = index["cells"][name]
        entry.update(state="COMPLETED" if error is None else "FAILED", state_unix=time.time())
        write_index(launch.exp_dir, index)
        (finished if error is None else failed).add(name)
        if error is None:
            console.print(f"[green]completed[/] {name}")
        else:
            console.print(f"[red]failed[/] {name}: {escape(error)} (log: {entry.get('log')})")

    with console.status("starting") as spinner:
        while todo or running:
            for planned in list(todo):
                cell, upstream = planned.cell, planned.wait_for
                if upstream in failed:
                    console.print(f"[red]skipped[/] {cell.name}: {upstream} did not complete")
                    failed.add(cell.name)
                    todo.remove(planned)
                    continue
                alone = cell.resources.gpus_per_node > 0
                room = not running if alone else len(running) < slots and not any(
                    p.cell.resources.gpus_per_node > 0 for p, _ in running.values())
                if room and (upstream is None or upstream in finished):
                    running[cell.name] = (planned, start_local(planned, launch.profile, launch.exp_dir / "logs",
                                                               code_dir, record))
                    todo.remove(planned)
            for name, (planned, job) in list(running.items()):
                if job.done():
                    del running[name]
                    finish(name, local_error(job))
            spinner.update(" | ".join(_progress_text(p.cell) for p, _ in running.values()) or "waiting")
            time.sleep(1.0)
    print_results(console, launch)
    return 1 if failed else 0


def _progress_text(cell: Cell) -> str:
    run = read_run_status(cell.run_dir)
    if run is None or run.step is None:
        return f"{cell.name}: starting"
    loss = f" loss {run.loss:.4g}" if run.loss is not None else ""
    return f"{cell.name}: step {run.step}/{run.total_steps}{loss}"


def print_results(console: Console, launch: Launch) -> None:
    """The results table of the experiment (the results tool), else each cell's final metrics."""
    try:
        from avbert.results.collect import collect
    except ImportError:
        collect = None
    if collect is not None:
        if not sys.stdout.isatty():
            os.environ.setdefault("COLUMNS", "160")  # the results table is wide; a pipe is not a terminal
        try:
            collect([str(launch.experiment.path)], launch.runs_dir, out_dir=None, print_tables=True)
            return
        except Exception as err:  # the summary below still shows every cell
            console.print(f"[yellow]results table unavailable ({escape(str(err))}); final metrics:[/]")
    console.print(summary_table(launch.cells, launch.experiment.name))


def summary_table(cells: list[Cell], title: str) -> Table:
    """Each cell's last logged metrics and its evaluation, if any."""
    table = Table(title=f"{title}: final metrics", title_justify="left")
    for column in ("cell", "state", "step", "loss", "evaluation"):
        table.add_column(column)
    for cell in cells:
        run = read_run_status(cell.run_dir) or RunStatus(state=None)
        evaluation = EvalRecord.from_json(read_json(cell.run_dir / EVAL))
        scores = ", ".join(f"{k} {v:.4g}" for k, v in evaluation.metrics.items()) if evaluation else ""
        table.add_row(f"{cell.variant}/{cell.stage}", str(run.state or "-"),
                      f"{_or_dash(run.step)}/{_or_dash(run.total_steps)}",
                      f"{run.loss:.4g}" if run.loss is not None else "-", scores or "-")
    return table


def _or_dash(value) -> str:
    return "-" if value is None else str(value)
