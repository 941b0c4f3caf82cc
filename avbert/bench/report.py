"""The benchmark record: machine, versions, date, figures and the targets.

``environment`` describes where the figures were taken (including the load
average, since other processes share the CPU), ``targets`` states each of
the suite's performance targets with the figure reached, and
``write_results`` writes ``benchmarks/results.json``; ``avbert.bench.markdown``
renders the same record as ``BENCHMARKS.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIME_LIMIT_S = 15 * 60
BENCH_TIME_AIM_S = 8 * 60


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> Optional[float]:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("deepspeed", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def environment() -> dict:
    """Machine, versions and date of this run."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {
            "platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_gib": _memory_gib(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
        },
        "versions": _versions(),
    }


def _target(name: str, where: str, figure: str, met: Optional[bool]) -> dict:
    return {"target": name, "where": where, "figure": figure, "met": met}


def layer_target(cpu: dict) -> dict:
    cmp = cpu["layer"]["comparison"]
    return _target("lowrank shared layer step <= 0.8x the dense shared layer", "CPU",
                   f"{cmp['ratio']:.2f}x", cmp["met"])


def zero_target(cpu: dict) -> dict:
    ratios = cpu["zero"]["ratios"]
    parts = [f"{p}: Adam moments {r['moments']:.3f}x, with ZeRO's fp32 master partition "
             f"{r['optimizer_state']:.3f}x" for p, r in ratios.items()]
    met = all(r["met"] for r in ratios.values()) if ratios else None
    return _target("ZeRO-2 per-rank optimizer state = 1/2 of stage 0 with 2 ranks (Adam moments; "
                   "see the ZeRO section for the master copy)", "CPU, 2 ranks", "; ".join(parts), met)


def planner_targets(cpu: dict, gpu: dict) -> list[dict]:
    rows = cpu["planner"]["cpu_tiny"]
    figure = ", ".join(f"{name} {row['relative_error']:+.1%}" for name, row in rows.items())
    out = [_target("memory planner within 15% of the measured peak, tiny scale", "CPU", figure,
                   all(row["within_tolerance"] for row in rows.values()))]
    if gpu.get("available"):
        checks = gpu["planner"]
        errors = {k: v["predicted_over_measured"] for k, v in checks.items() if v["predicted_over_measured"]}
        figure = ", ".join(f"{k} {v - 1:+.1%}" for k, v in errors.items())
        met = all(abs(v - 1) <= 0.15 for v in errors.values()) if errors else None
        out.append(_target("memory planner within 15% of the measured peak, paper scale", gpu["device"],
                           figure, met))
    else:
        out.append(_target("memory planner within 15% of the measured peak, paper scale", "GPU",
                           gpu["note"], None))
    return out


def mfu_target(gpu: dict) -> dict:
    name = ">= 40% MFU for the full paper-scale step on an H100"
    if not gpu.get("available"):
        return _target(name, "GPU", gpu["note"], None)
    rows = {k: v for k, v in gpu["variants"].items() if v.get("mfu") is not None}
    if not rows:
        return _target(name, gpu["device"], "MFU not computed (GPU not in the peak table)", None)
    best = max(rows, key=lambda k: rows[k]["mfu"])
    figure = f"{rows[best]['mfu']:.1%} ({best}, batch {gpu['batch']}, {gpu['device']})"
    met = rows[best]["mfu"] >= 0.40 if "H100" in gpu["device"] else None
    return _target(name, gpu["device"], figure, met)


def runtime_target(duration_s: float, sections: list[str]) -> dict:
    figure = f"{duration_s / 60:.1f} min ({', '.join(sections)})"
    return _target("tools/bench.py runs in under 15 minutes on CPU (aim < 8)", "CPU", figure,
                   duration_s < BENCH_TIME_LIMIT_S)


def targets(results: dict) -> list[dict]:
    """Every target with the figure reached (None where it was not measured)."""
    cpu, gpu = results.get("cpu", {}), results.get("gpu", {"note": "not run"})
    out = []
    if "layer" in cpu:
        out.append(layer_target(cpu))
    if "zero" in cpu:
        out.append(zero_target(cpu))
    out.append(mfu_target(gpu))
    if "planner" in cpu:
        out.extend(planner_targets(cpu, gpu))
    out.append(runtime_target(results["duration_s"], results["sections"]))
    return out


def merge_results(base: dict, rerun: dict) -> dict:
    """``base`` (a full run's results) with the sections of ``rerun`` in place of its own.
    The run header (environment, load, threads, run time) stays ``base``'s; the rerun is
    appended to ``reruns`` with its own date, commit, load and threads, so that every
    figure can be traced to the run that produced it."""
    if bool(base.get("quick")) != bool(rerun.get("quick")):
        raise ValueError("cannot merge a --quick run with a full one")
    merged = dict(base, cpu=dict(base.get("cpu", {})), section_s=dict(base.get("section_s", {})),
                  sections=list(base.get("sections", [])))
    for name in rerun["sections"]:
        if name == "gpu":
            merged["gpu"] = rerun["gpu"]
        else:
            merged["cpu"][name] = rerun["cpu"][name]
        merged["section_s"][name] = rerun["section_s"][name]
        if name not in merged["sections"]:
            merged["sections"].append(name)
    record = {key: rerun.get(key) for key in ("sections", "environment", "load_average", "threads", "duration_s")}
    merged["reruns"] = [*base.get("reruns", []), record]
    return merged


def write_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
