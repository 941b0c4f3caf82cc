"""Side-by-side timing: the variants of one comparison run interleaved.

Every repeat times each variant once, in an order that alternates between
repeats (A B, B A, ...), so that load from other processes hits the
variants alike. The figure reported is the median over the repeats of the
per-repeat ratio candidate/baseline: the two samples of a repeat are
adjacent in time, which cancels slow drifts of the machine's load. The ratio
of the median times and the range of the per-repeat ratios are kept beside
it. Each timed sample averages ``inner`` calls, enough to lift short
kernels well above timer resolution.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one variant, one sample per repeat."""

    name: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict:
        return {"name": self.name, "median_s": self.median, "samples_s": self.samples}


@dataclass(frozen=True)
class Comparison:
    """A candidate against a baseline, timed side by side."""

    name: str
    baseline: Timing
    candidate: Timing
    target: Optional[float] = None  # the candidate/baseline ratio to reach (<=), if any

    @property
    def round_ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.baseline.samples, self.candidate.samples)]

    @property
    def ratio(self) -> float:
        """Median of the per-repeat ratios candidate / baseline."""
        return statistics.median(self.round_ratios)

    @property
    def met(self) -> Optional[bool]:
        return None if self.target is None else self.ratio <= self.target

    def to_dict(self) -> dict:
        rounds = self.round_ratios
        return {
            "name": self.name,
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
            "ratio": self.ratio,
            "ratio_of_medians": self.candidate.median / self.baseline.median,
            "round_ratio_min": min(rounds),
            "round_ratio_max": max(rounds),
            "repeats": len(rounds),
            "target_ratio": self.target,
            "met": self.met,
        }


@dataclass(frozen=True)
class TimingPlan:
    """How many times to run: untimed warm-up calls, timed repeats, calls per sample."""

    warmup: int = 2
    repeats: int = 7
    inner: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(fn: Callable[[], object], inner: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - start) / inner


def _no_sync() -> None:
    return None


def time_interleaved(variants: dict[str, Callable[[], object]], plan: TimingPlan,
                     sync: Callable[[], None] = _no_sync) -> dict[str, Timing]:
    """Seconds per call of each variant, sampled round-robin."""
    names = list(variants)
    for name in names:
        for _ in range(plan.warmup):
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(plan.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(_sample(variants[name], plan.inner, sync))
    return {name: Timing(name, samples[name]) for name in names}


def compare(name: str, baseline: tuple[str, Callable[[], object]], candidate: tuple[str, Callable[[], object]],
            plan: TimingPlan, target: Optional[float] = None) -> Comparison:
    """Time ``candidate`` against ``baseline`` side by side."""
    timings = time_interleaved(dict([baseline, candidate]), plan)
    return Comparison(name, timings[baseline[0]], timings[candidate[0]], target)
