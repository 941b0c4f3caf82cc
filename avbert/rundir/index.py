"""The experiment index, ``<runs_dir>/<experiment>/index.json``: what the launcher ran.

The launcher writes it (``avbert.launch.index``); ``collect`` and ``tools/status.py``
read it through ``read_experiment_index``, so a table shows what ran even after the
experiment file changed. Its shape::

    {"experiment": "sharing_ablation", "file": ".../experiments/sharing_ablation.yaml",
     "file_sha256": "...", "scale": "tiny", "seeds": [], "variants": [...], "stages": [...],
     "report": {"layout": "sharing", "title": "...", "reference": {"xl-part": {"top1": 67.5}}},
     "cells": {"sharing_ablation/xl-part/pretrain": {
         "variant": "xl-part", "stage": "pretrain", "base_stage": "pretrain", "kind": "pretrain",
         "after": null, "seed": null, "base_variant": "xl-part", "config": {...resolved...},
         "run_dir": ..., "cluster": "slurm", "job_id": "41_3", "job_name": ..., "log": ...,
         "state": "PENDING", "state_unix": 1795446131.0, "submitted": "2026-11-23T14:02:11",
         "submitted_unix": 1795442531.0, "code_dir": ..., "git_commit": ...,
         "history": [{"job_id": ..., "submitted": ..., "state": ...}]}},
     "launches": [{"time": ..., "cluster": ..., "profile": ..., "code_dir": ..., "submitted": [...]}]}

``cells`` keeps the order the experiment file gave them. Reading is tolerant: a cell
entry without a variant or stage is skipped and counted, a missing key reads as None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from avbert.rundir.files import INDEX, file_sha256, read_json, write_json

ROW_PER_STAGE_LAYOUTS = ("downstream", "components")  # report layouts with a row per evaluated stage, not per variant


@dataclass(frozen=True)
class IndexCell:
    """One cell as the launcher recorded it."""

    name: str
    variant: str
    stage: str
    kind: str
    base_stage: str  # the experiment's stage this cell comes from (``ucf101`` for ``ucf101-1``)
    after: Optional[str] = None  # the upstream stage, in the same variant
    seed: Optional[int] = None
    base_variant: Optional[str] = None  # the variant without its seed suffix
    config: Optional[dict] = None  # the resolved config the cell was launched with
    run_dir: Optional[str] = None
    state: Optional[str] = None  # the scheduler's last known state
    state_unix: Optional[float] = None  # when the launcher recorded it (at the latest submission, at least)
    job_id: Optional[str] = None
    git_commit: Optional[str] = None

    @classmethod
    def from_entry(cls, name: str, entry: dict) -> Optional["IndexCell"]:
        variant, stage = entry.get("variant"), entry.get("stage")
        if (variant is None or stage is None) and name.count("/") >= 2:
            variant, stage = name.split("/")[-2:]
        if variant is None or stage is None:
            return None
        after = entry.get("after")
        if isinstance(after, str) and "/" in after:  # recorded as the upstream cell's name
            after = after.split("/")[-1]
        seed = entry.get("seed")
        config = entry.get("config")
        return cls(name=name, variant=str(variant), stage=str(stage),
                   kind=str(entry.get("kind") or ("pretrain" if stage == "pretrain" else stage)),
                   base_stage=str(entry.get("base_stage") or stage), after=after,
                   seed=seed if isinstance(seed, int) else None,
                   base_variant=str(entry["base_variant"]) if entry.get("base_variant") else None,
                   config=config if isinstance(config, dict) else None,
                   run_dir=entry.get("run_dir"), state=entry.get("state"), state_unix=_recorded_at(entry),
                   job_id=str(entry["job_id"]) if entry.get("job_id") is not None else None,
                   git_commit=entry.get("git_commit"))


def _recorded_at(entry: dict) -> Optional[float]:
    """When the entry's state was recorded: ``state_unix``, and no earlier than its job's submission
    (``submitted_unix``); None when the entry gives neither."""
    times = [float(entry[key]) for key in ("state_unix", "submitted_unix")
             if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool)]
    return max(times) if times else None


@dataclass(frozen=True)
class ExperimentIndex:
    """An experiment's index, read."""

    path: Path
    experiment: str
    scale: Optional[str]
    file: Optional[str]  # the experiment file it was launched from
    file_sha256: Optional[str]  # that file's content hash at the last launch
    report: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)
    cells: list = field(default_factory=list)  # [IndexCell], in the experiment's order
    skipped: int = 0  # cell entries that named no variant or stage

    def file_change(self) -> Optional[str]:
        """Why the experiment file no longer is what was launched, or None when it is (or
        when the index recorded no hash)."""
        if not self.file or not self.file_sha256:
            return None
        now = file_sha256(self.file)
        if now is None:
            return f"experiment file {self.file} no longer exists"
        if now != self.file_sha256:
            return f"experiment file {self.file} changed since it was launched"
        return None


def read_index(exp_dir: str | Path) -> dict:
    """The index as a mapping (an empty one when there is none), for the launcher to update."""
    index = read_json(Path(exp_dir) / INDEX)
    if index is None:
        return {"cells": {}, "launches": []}
    if not isinstance(index.get("cells"), dict):
        index["cells"] = {}
    if not isinstance(index.get("launches"), list):
        index["launches"] = []
    return index


def write_index(exp_dir: str | Path, index: dict) -> None:
    """Replace the index atomically."""
    Path(exp_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(exp_dir) / INDEX, index)


def read_experiment_index(exp_dir: str | Path) -> Optional[ExperimentIndex]:
    """The index of the experiment in ``exp_dir``; None when there is none or it is not a
    JSON object."""
    path = Path(exp_dir) / INDEX
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    entries = data.get("cells") or {}
    if isinstance(entries, list):
        entries = {str(e.get("name", "")): e for e in entries if isinstance(e, dict)}
    cells, skipped = [], 0
    for name, entry in entries.items():
        cell = IndexCell.from_entry(str(name), entry) if isinstance(entry, dict) else None
        if cell is None:
            skipped += 1
        else:
            cells.append(cell)
    report = data.get("report")
    seeds = data.get("seeds")
    return ExperimentIndex(path=path, experiment=str(data.get("experiment") or Path(exp_dir).name),
                           scale=str(data["scale"]) if data.get("scale") else None, file=data.get("file"),
                           file_sha256=data.get("file_sha256"), report=report if isinstance(report, dict) else {},
                           seeds=[s for s in seeds if isinstance(s, int)] if isinstance(seeds, list) else [],
                           cells=cells, skipped=skipped)
