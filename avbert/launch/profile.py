"""Cluster profiles: one YAML file per cluster in ``slurm/profiles/``.

A profile says where jobs go (partition, account, qos, constraint, excluded
nodes), what a node offers a job (nodes per job, GPUs and tasks per node, CPU
cores and memory per task), how long one job run may last, and how the job is
kept alive across time limits (requeue limit, signal delay). A cluster is
never guessed from the host name: a launch names its profile file.

The file is read strictly: an unknown key, a wrong type or an impossible
value is refused with the file, the key and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from avbert.config import ConfigError, merge_into, read_yaml

# Slurm re-signals a job at once when its time limit is not longer than the signal
# delay plus scheduling slack; two minutes is the shortest limit that works.
MIN_TIME_LIMIT_MIN = 2
MIN_SIGNAL_DELAY_S = 30
# sbatch options the launcher writes itself; a profile may not override them.
RESERVED_SBATCH_OPTIONS = ("array", "dependency", "job-name", "output", "error", "signal", "requeue")


@dataclass
class Profile:
    """One cluster, as a job sees it (see the comment block of slurm/profiles/local.yaml)."""

    name: str = ""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    nodes: int = 1  # nodes per job by default, and the most one stage may ask for
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_per_task_gb: float = 4.0
    time_limit_min: int = 60
    requeue_limit: int = 3
    signal_delay_s: int = 120
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # the file it was read from (not a YAML key)


REQUIRED_KEYS = ("name", "partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                 "mem_per_task_gb", "time_limit_min", "requeue_limit", "signal_delay_s")


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile file; errors name the file and the key."""
    source = str(path)
    data = read_yaml(path)
    valid = [f.name for f in fields(Profile) if f.name != "path"]
    for key in data:
        if key not in valid:
            match = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{match[0]}'?" if match else "valid keys: " + ", ".join(valid)
            raise ConfigError(f"unknown key; {hint}", source, str(key))
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ConfigError(f"missing required key (a profile sets {', '.join(REQUIRED_KEYS)})", source, missing[0])
    profile = merge_into(Profile(), data, source)
    profile.path = source
    check_profile(profile)
    return profile


def _require(condition: bool, message: str, profile: Profile, key: str) -> None:
    if not condition:
        raise ConfigError(message, profile.path or None, key)


def check_profile(profile: Profile) -> None:
    """Values that no cluster can honour, or that break requeueing."""
    _require(bool(profile.name), "must be a non-empty name", profile, "name")
    _require(profile.nodes >= 1, f"must be >= 1, got {profile.nodes}", profile, "nodes")
    _require(profile.tasks_per_node >= 1, f"must be >= 1, got {profile.tasks_per_node}", profile, "tasks_per_node")
    _require(profile.gpus_per_node >= 0, f"must be >= 0, got {profile.gpus_per_node}", profile, "gpus_per_node")
    _require(profile.gpus_per_node == 0 or profile.tasks_per_node == profile.gpus_per_node,
             f"must equal gpus_per_node ({profile.gpus_per_node}): one task per GPU", profile, "tasks_per_node")
    _require(profile.cpus_per_task >= 1, f"must be >= 1, got {profile.cpus_per_task}", profile, "cpus_per_task")
    _require(0 < profile.mem_per_task_gb < math.inf, f"must be a finite number > 0, got {profile.mem_per_task_gb}",
             profile, "mem_per_task_gb")
    _require(profile.time_limit_min >= MIN_TIME_LIMIT_MIN,
             f"must be >= {MIN_TIME_LIMIT_MIN} minutes, got {profile.time_limit_min}", profile, "time_limit_min")
    _require(profile.requeue_limit >= 0, f"must be >= 0, got {profile.requeue_limit}", profile, "requeue_limit")
    _require(profile.signal_delay_s >= MIN_SIGNAL_DELAY_S,
             f"must be >= {MIN_SIGNAL_DELAY_S} s, got {profile.signal_delay_s}", profile, "signal_delay_s")
    _require(profile.signal_delay_s < profile.time_limit_min * 60,
             f"must be shorter than time_limit_min ({profile.time_limit_min} min)", profile, "signal_delay_s")
    for option in profile.additional_parameters:
        _require(option.replace("_", "-") not in RESERVED_SBATCH_OPTIONS,
                 f"'{option}' is set by the launcher; reserved: {', '.join(RESERVED_SBATCH_OPTIONS)}",
                 profile, f"additional_parameters.{option}")
