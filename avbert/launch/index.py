"""The experiment index and the per-launch code snapshot.

``<runs_dir>/<experiment>/index.json`` records what the launcher did::

    {"experiment": "sharing_ablation", "file": ".../experiments/sharing_ablation.yaml",
     "scale": "tiny", "variants": [...], "stages": [...],
     "cells": {"sharing_ablation/xl-part/pretrain": {
         "variant": "xl-part", "stage": "pretrain", "kind": "pretrain", "after": null,
         "run_dir": ..., "cluster": "slurm", "job_id": "41_3", "job_name": ..., "log": ...,
         "state": "PENDING", "submitted": "2026-11-23T14:02:11", "code_dir": ..., "git_commit": ...,
         "history": [{"job_id": ..., "submitted": ..., "state": ...}]}},
     "launches": [{"time": ..., "cluster": ..., "profile": ..., "code_dir": ..., "submitted": [...]}]}

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

from avbert.rundir import INDEX, read_json, write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_PARTS = ("avbert", "tools")


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def experiment_dir(runs_dir: str | Path, experiment: str) -> Path:
    return Path(runs_dir).expanduser().resolve() / experiment


def read_index(exp_dir: Path) -> dict:
    """The index, or an empty one."""
    index = read_json(exp_dir / INDEX)
    if index is None:
        return {"cells": {}, "launches": []}
    index.setdefault("cells", {})
    index.setdefault("launches", [])
    return index


def write_index(exp_dir: Path, index: dict) -> None:
    """Replace the index atomically."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_json(exp_dir / INDEX, index)


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
    """Enter a submitted cell; earlier submissions of it move to its history."""
    old = index["cells"].get(cell.name, {})
    history = list(old.get("history", []))
    if old.get("job_id"):
        history.append({key: old.get(key) for key in ("job_id", "cluster", "submitted", "state")})
    index["cells"][cell.name] = {
        "variant": cell.variant, "stage": cell.stage, "kind": cell.kind, "after": cell.upstream,
        "run_dir": str(cell.run_dir), "cluster": cluster, "job_id": job_id, "job_name": job_name, "log": log,
        "state": "SUBMITTED", "submitted": now_text(), "submitted_unix": time.time(), "code_dir": str(code_dir), "git_commit": commit,
        "history": history,
    }


def describe_cells(index: dict, experiment, cells, scale: str) -> None:
    """The experiment's identity and its cells in order, for the results tool."""
    index["experiment"] = experiment.name
    index["file"] = str(experiment.path.resolve())
    index["scale"] = scale
    index["variants"] = list(dict.fromkeys(cell.variant for cell in cells))
    index["stages"] = list(dict.fromkeys(cell.stage for cell in cells))
    for cell in cells:
        entry = index["cells"].setdefault(cell.name, {"state": "NEW"})
        entry.update(variant=cell.variant, stage=cell.stage, kind=cell.kind, after=cell.upstream,
                     run_dir=str(cell.run_dir))
