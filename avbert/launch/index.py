"""The experiment index and the per-launch code snapshot.

``<runs_dir>/<experiment>/index.json`` records what the launcher did: the experiment's
identity, report and cells with their resolved configs, each cell's job, and every
launch (the format: ``avbert.rundir.index``). The results tool builds its tables from
it, not from the experiment file, which may have changed since.

Every launch that submits something copies the ``avbert`` package and
``tools`` into ``<runs_dir>/<experiment>/code/<time>-<commit>/``; its jobs
import from that copy, so editing the working tree never changes a queued job.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from avbert.config import to_dict
from avbert.rundir import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_PARTS = ("avbert", "tools")


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def experiment_dir(runs_dir: str | Path, experiment: str) -> Path:
    return Path(runs_dir).expanduser().resolve() / experiment


def git_commit(repo: Path = REPO_ROOT) -> Optional[str]:
    """HEAD of the suite's repository, with ``-dirty`` when tracked files differ; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def snapshot_code(exp_dir: Path, commit: Optional[str], repo: Path = REPO_ROOT) -> Path:
    """Copy the package and tools for this launch's jobs; returns the directory to import from."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = f"{stamp}-{commit[:7]}" if commit else stamp
    target = exp_dir / "code" / label
    suffix = 1
    while target.exists():
        suffix += 1
        target = exp_dir / "code" / f"{label}.{suffix}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in SNAPSHOT_PARTS:
        if (repo / part).is_dir():
            shutil.copytree(repo / part, target / part, ignore=ignore)
    return target


def record_submission(index: dict, cell, cluster: str, job_id: str, log: str, code_dir: Path,
                      commit: Optional[str], job_name: str) -> None:
    """Enter a submitted cell's job (its description, ``describe_cells``, stays); earlier
    submissions of it move to its history."""
    entry = index["cells"].setdefault(cell.name, {})
    history = list(entry.get("history", []))
    if entry.get("job_id"):
        history.append({key: entry.get(key) for key in ("job_id", "cluster", "submitted", "state")})
    submitted = time.time()
    entry.update({
        "variant": cell.variant, "stage": cell.stage, "kind": cell.kind, "after": cell.upstream,
        "run_dir": str(cell.run_dir), "cluster": cluster, "job_id": job_id, "job_name": job_name, "log": log,
        "state": "SUBMITTED", "state_unix": submitted, "submitted": now_text(), "submitted_unix": submitted,
        "code_dir": str(code_dir), "git_commit": commit, "history": history,
    })


def report_record(experiment) -> dict:
    """The experiment's report section (layout, title, the paper's numbers) as plain data."""
    report = experiment.spec.report
    if report is None:
        return {"layout": "sharing", "title": experiment.name, "reference": {}}
    return {"layout": report.layout, "title": report.title or experiment.name,
            "reference": {key: {k: v for k, v in vars(value).items() if v is not None}
                          for key, value in report.reference.items()}}


def describe_cells(index: dict, experiment, cells, scale: str) -> None:
    """The experiment's identity, report and cells in order (each with the resolved config
    it is launched with), for the results tool."""
    index["experiment"] = experiment.name
    index["file"] = str(experiment.path.resolve())
    index["file_sha256"] = file_sha256(experiment.path)
    index["scale"] = scale
    index["seeds"] = list(experiment.spec.seeds)
    index["report"] = report_record(experiment)
    index["variants"] = list(dict.fromkeys(cell.variant for cell in cells))
    index["stages"] = list(dict.fromkeys(cell.stage for cell in cells))
    for cell in cells:
        entry = index["cells"].setdefault(cell.name, {"state": "NEW"})
        entry.update(variant=cell.variant, stage=cell.stage, base_stage=cell.stage_key or cell.stage, kind=cell.kind,
                     after=cell.upstream, seed=cell.seed, base_variant=cell.base_variant or cell.variant,
                     config=to_dict(cell.config), run_dir=str(cell.run_dir))
