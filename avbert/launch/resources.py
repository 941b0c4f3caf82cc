"""What one stage's job asks of the cluster.

An experiment file gives, per scale and stage, the resources the stage needs
(``nodes``, ``gpus_per_node``, ``time_limit_min``, ...) and an estimate of its
wall-clock ``hours``; whatever it leaves out comes from the cluster profile.
One task runs per GPU; on CPU-only nodes the profile's ``tasks_per_node``
applies. A request the profile's nodes cannot serve is refused here, before
anything is submitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from avbert.config import ConfigError
from avbert.launch.profile import MIN_TIME_LIMIT_MIN, Profile


@dataclass
class StageResources:
    """The ``resources`` mapping of one stage at one scale (unset: the profile's value)."""

    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_per_task_gb: Optional[float] = None
    time_limit_min: Optional[int] = None
    hours: Optional[float] = None  # expected wall-clock hours of the whole stage, requeues included


@dataclass(frozen=True)
class Resources:
    """A stage's job shape on one cluster."""

    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    cpus_per_task: int
    mem_per_task_gb: float
    time_limit_min: int
    signal_delay_s: int
    requeue_limit: int
    hours: Optional[float] = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def estimated_hours(self) -> float:
        """The stated estimate, else one full time limit."""
        return self.hours if self.hours is not None else self.time_limit_min / 60

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.estimated_hours

    def describe(self) -> str:
        """``8x8 GPU`` / ``1x1 CPU``: nodes x tasks per node, and what a task runs on."""
        device = "GPU" if self.gpus_per_node else "CPU"
        return f"{self.nodes}x{self.tasks_per_node} {device}"


def resolve_resources(asked: StageResources, profile: Profile, source: str, key: str) -> Resources:
    """The stage's request completed from the profile, or a ConfigError at ``key``."""
    gpus = profile.gpus_per_node if asked.gpus_per_node is None else asked.gpus_per_node
    if gpus > 0:
        tasks = gpus
    else:
        tasks = profile.tasks_per_node if profile.gpus_per_node == 0 else 1
    resources = Resources(
        nodes=profile.nodes if asked.nodes is None else asked.nodes,
        gpus_per_node=gpus,
        tasks_per_node=tasks,
        cpus_per_task=profile.cpus_per_task if asked.cpus_per_task is None else asked.cpus_per_task,
        mem_per_task_gb=profile.mem_per_task_gb if asked.mem_per_task_gb is None else asked.mem_per_task_gb,
        time_limit_min=profile.time_limit_min if asked.time_limit_min is None else asked.time_limit_min,
        signal_delay_s=profile.signal_delay_s,
        requeue_limit=profile.requeue_limit,
        hours=asked.hours,
    )
    check_resources(resources, profile, source, key)
    return resources


def check_resources(res: Resources, profile: Profile, source: str, key: str) -> None:
    """Refuse what no node of the profile's cluster can give, naming the key."""
    where = f"profile '{profile.name}' ({profile.path})"
    checks = [
        ("nodes", res.nodes >= 1, f"must be >= 1, got {res.nodes}"),
        ("nodes", res.nodes <= profile.nodes, f"asks {res.nodes} nodes but {where} allows {profile.nodes} per job"),
        ("gpus_per_node", res.gpus_per_node >= 0, f"must be >= 0, got {res.gpus_per_node}"),
        ("gpus_per_node", res.gpus_per_node <= profile.gpus_per_node,
         f"asks {res.gpus_per_node} GPUs per node but {where} has {profile.gpus_per_node}"),
        ("cpus_per_task", res.cpus_per_task >= 1, f"must be >= 1, got {res.cpus_per_task}"),
        ("mem_per_task_gb", 0 < res.mem_per_task_gb < math.inf,
         f"must be a finite number > 0, got {res.mem_per_task_gb}"),
        ("time_limit_min", res.time_limit_min >= MIN_TIME_LIMIT_MIN,
         f"must be >= {MIN_TIME_LIMIT_MIN} minutes (the time-limit signal needs room), got {res.time_limit_min}"),
        ("time_limit_min", res.time_limit_min * 60 > res.signal_delay_s,
         f"{res.time_limit_min} min is not longer than the signal delay of {where} ({res.signal_delay_s} s)"),
        ("hours", res.hours is None or res.hours > 0, f"must be > 0, got {res.hours}"),
    ]
    for name, ok, message in checks:
        if not ok:
            raise ConfigError(message, source, f"{key}.{name}")
