"""Typed records of a run directory's JSON files: ``status.json`` (``RunStatus``), one line of
``metrics.jsonl`` (``MetricsLine``) and ``eval.json`` (``EvalRecord``).

The engine builds what it writes through these records' ``to_json`` (``avbert.train.metrics``,
``avbert.train.downstream``); the launcher, ``tools/status.py`` and ``collect`` read the files
back through ``from_json``. Reading is tolerant, like ``read_json``: ``from_json`` never
raises; a value of the wrong type reads as None (or is left out of a mapping), and only
something that is not a JSON object at all reads as no record (None). ``to_json`` gives the
object the engine writes, key for key and in its order: a record read from an engine-written
file writes back the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping, Optional


class RunState(str, Enum):
    """A run's own word on itself, ``status.json``'s ``state``: the engine writes it, the
    launcher, ``tools/status.py`` and ``collect`` read it (each beside the scheduler's
    state, classified by ``job_state_kind``). A ``str``: it is written and compared as the
    plain word."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"  # stopped on a signal after a complete checkpoint, to be requeued

    def __str__(self) -> str:
        return self.value


ELAPSED = "time/elapsed_s"  # the metrics line's wall time, carried over resumes


def _number(value: Any) -> Optional[float]:
    """``value`` when it is a JSON number (int or float, not a bool), as it is; else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: Any) -> Optional[float]:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _int(value: Any) -> Optional[int]:
    """An integer, or a float with an integral value; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _bool(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def _run_state(value: Any) -> Optional[RunState]:
    """The run's word as a ``RunState`` (any case); None for no word or one it does not know."""
    try:
        return RunState(str(value).lower()) if isinstance(value, str) else None
    except ValueError:
        return None


def _numbers(value: Any, allow_none: bool = False) -> Mapping[str, Optional[float]]:
    """A read-only name -> number mapping of ``value``'s numeric entries (and null ones, with
    ``allow_none``); an empty one when ``value`` is not an object."""
    if not isinstance(value, Mapping):
        return MappingProxyType({})
    return MappingProxyType({str(k): v for k, v in value.items()
                             if _number(v) is not None or (allow_none and v is None)})


@dataclass(frozen=True)
class RunStatus:
    """``status.json``: the run's own word on itself, replaced whole at every log step and when
    the run ends.

    Every status has the state, the step, the total steps, the last loss and when it was
    written. The training loop adds where the run runs (``device``, ``world_size``, ``hosts``
    in rank order, ``manifest_sha256`` of the data manifest it reads; all four together,
    possibly null), and the path of the export (``export``, null without one) to the status
    it writes when it stops completed or preempted. A failed run adds its ``error``; a run
    that failed before its loop started, or in its evaluation, writes no placement.
    """

    state: Optional[RunState]  # None: no word, or one this version does not know
    step: Optional[int] = None
    total_steps: Optional[int] = None
    loss: Optional[float] = None  # the last logged loss (may be NaN)
    updated: Optional[str] = None  # local time, ISO 8601 with offset
    updated_unix: Optional[float] = None
    device: Optional[str] = None  # the device type: ``cuda`` or ``cpu``
    world_size: Optional[int] = None
    hosts: Optional[tuple[str, ...]] = None
    manifest_sha256: Optional[str] = None
    export: Optional[str] = None
    error: Optional[str] = None

    @property
    def placed(self) -> bool:
        """Whether the status records where the run ran (the training loop wrote it)."""
        return any(v is not None for v in (self.device, self.world_size, self.hosts, self.manifest_sha256))

    @classmethod
    def from_json(cls, data: Any) -> Optional["RunStatus"]:
        """The status in ``data`` (``status.json``'s object); None when it is not an object."""
        if not isinstance(data, Mapping):
            return None
        hosts = data.get("hosts")
        return cls(state=_run_state(data.get("state")), step=_int(data.get("step")),
                   total_steps=_int(data.get("total_steps")), loss=_number(data.get("loss")),
                   updated=_str(data.get("updated")), updated_unix=_finite(data.get("updated_unix")),
                   device=_str(data.get("device")), world_size=_int(data.get("world_size")),
                   hosts=tuple(hosts) if isinstance(hosts, list) and all(isinstance(h, str) for h in hosts) else None,
                   manifest_sha256=_str(data.get("manifest_sha256")), export=_str(data.get("export")),
                   error=_str(data.get("error")))

    def to_json(self) -> dict:
        """The object ``status.json`` holds."""
        out: dict = {"state": self.state.value if self.state is not None else None, "step": self.step,
                     "total_steps": self.total_steps, "loss": self.loss, "updated": self.updated,
                     "updated_unix": self.updated_unix}
        if self.placed:
            out.update(device=self.device, world_size=self.world_size,
                       hosts=list(self.hosts) if self.hosts is not None else None, manifest_sha256=self.manifest_sha256)
        if self.export is not None or (self.placed and self.state in (RunState.COMPLETED, RunState.PREEMPTED)):
            out["export"] = self.export
        if self.error is not None:
            out["error"] = self.error
        return out


def as_run_status(status: Any) -> Optional[RunStatus]:
    """``status`` as a ``RunStatus``: itself when it is one, else read from a ``status.json``
    object (None when it is none)."""
    return status if isinstance(status, RunStatus) else RunStatus.from_json(status)


@dataclass(frozen=True)
class MetricsLine:
    """One line of ``metrics.jsonl``: a log step's numbers.

    ``step``, the wall time so far (``time/elapsed_s``, which the engine carries over a resume)
    and every other number by name (``loss``, ``cls/acc``, ``lr``, ``perf/clips_per_s``,
    ``eval/top1``, ...; a null one, e.g. ``grad_norm`` before the first step, kept as None).
    A line a downstream stage adds for its evaluation has no wall time.
    """

    step: Optional[int]
    values: Mapping[str, Optional[float]] = field(default_factory=lambda: MappingProxyType({}))
    elapsed_s: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.values, MappingProxyType):
            object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def get(self, name: str) -> Optional[float]:
        """The number called ``name`` (``time/elapsed_s`` included), or None."""
        return self.elapsed_s if name == ELAPSED else self.values.get(name)

    @classmethod
    def from_json(cls, data: Any) -> Optional["MetricsLine"]:
        """The line in ``data`` (one line's object); None when it is not an object. Entries that
        are not numbers (or null) are left out."""
        if not isinstance(data, Mapping):
            return None
        values = {k: v for k, v in _numbers(data, allow_none=True).items() if k not in ("step", ELAPSED)}
        return cls(step=_int(data.get("step")), values=values, elapsed_s=_number(data.get(ELAPSED)))

    def to_json(self) -> dict:
        """The line's object: ``step`` first, the wall time last, as the engine writes it."""
        out: dict = {} if self.step is None else {"step": self.step}
        out.update(self.values)
        if self.elapsed_s is not None:
            out[ELAPSED] = self.elapsed_s
        return out


@dataclass(frozen=True)
class EvalRecord:
    """``eval.json``: a downstream stage's evaluation of its exported classifier on the test split.

    What was evaluated (``task``, ``protocol``, ``feature``, ``split``, the ``pretrained``
    export it started from, ``model_config``, ``params`` by part), how (``test_views`` x
    ``test_crops`` per video, ``num_classes``, ``multilabel``), and the outcome: ``metrics``
    (``top1``, ``top5``, ``map``, in percent), ``videos`` scored, the distinct
    ``views_per_video`` they had, ``map_classes`` (classes with a positive, for mAP), and the
    training ``step`` of the evaluated export.
    """

    task: Optional[str] = None
    protocol: Optional[str] = None
    feature: Optional[str] = None
    split: Optional[str] = None
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    videos: Optional[int] = None
    views_per_video: Optional[tuple[int, ...]] = None
    test_views: Optional[int] = None
    test_crops: Optional[int] = None
    num_classes: Optional[int] = None
    multilabel: Optional[bool] = None
    map_classes: Optional[int] = None
    step: Optional[int] = None
    pretrained: Optional[str] = None
    model_config: Optional[dict] = None
    params: Optional[Mapping[str, int]] = None

    def __post_init__(self):
        if not isinstance(self.metrics, MappingProxyType):
            object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        if self.params is not None and not isinstance(self.params, MappingProxyType):
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @classmethod
    def from_json(cls, data: Any) -> Optional["EvalRecord"]:
        """The evaluation in ``data`` (``eval.json``'s object); None when it is not an object."""
        if not isinstance(data, Mapping):
            return None
        views = data.get("views_per_video")
        views = [_int(v) for v in views] if isinstance(views, list) else None
        params = data.get("params")
        params = {str(k): v for k, v in params.items() if _int(v) is not None} if isinstance(params, Mapping) else None
        model_config = data.get("model_config")
        split = data.get("split")
        return cls(task=_str(data.get("task")), protocol=_str(data.get("protocol")), feature=_str(data.get("feature")),
                   split=str(split) if isinstance(split, (str, int)) and not isinstance(split, bool) else None,
                   metrics=_numbers(data.get("metrics")), videos=_int(data.get("videos")),
                   views_per_video=tuple(views) if views is not None and None not in views else None,
                   test_views=_int(data.get("test_views")), test_crops=_int(data.get("test_crops")),
                   num_classes=_int(data.get("num_classes")), multilabel=_bool(data.get("multilabel")),
                   map_classes=_int(data.get("map_classes")), step=_int(data.get("step")),
                   pretrained=_str(data.get("pretrained")),
                   model_config=dict(model_config) if isinstance(model_config, Mapping) else None, params=params)

    def to_json(self) -> dict:
        """The object ``eval.json`` holds (written with sorted keys)."""
        return {"task": self.task, "protocol": self.protocol, "feature": self.feature, "split": self.split,
                "metrics": dict(self.metrics), "videos": self.videos,
                "views_per_video": list(self.views_per_video) if self.views_per_video is not None else None,
                "test_views": self.test_views, "test_crops": self.test_crops, "num_classes": self.num_classes,
                "multilabel": self.multilabel, "map_classes": self.map_classes, "step": self.step,
                "pretrained": self.pretrained, "model_config": self.model_config,
                "params": dict(self.params) if self.params is not None else None}
