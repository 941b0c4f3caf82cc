"""``python tools/fault_inject.py [--faults K] [KEY=VALUE ...]``: preempt a running grid K times and check
that nothing is lost.

Launches an experiment's grid (default ``experiments/smoke.yaml``, cut to a few steps by the
``KEY=VALUE`` overrides) on the running local Slurm cluster, preferably the two-node one
(``slurm/local-cluster/start.sh --nodes 2``, profile ``slurm/profiles/local-2nodes.yaml``), and at
the same time the same grid, uninterrupted, on this machine (submitit's local executor) in
another runs directory as the reference. While the grid runs it stops K running cells, each
chosen at random among those past their first checkpoint, in a random way:

- ``requeue``: ``scontrol requeue JOB`` (Slurm ends the run with SIGTERM and queues the job again);
- ``sigterm``: ``scancel --signal=TERM JOB`` (a bare SIGTERM; the job requeues itself);
- ``node``: the node the cell runs on is lost: every process in its network namespace is killed
  (``slurmd``, the job's steps) and the node marked DOWN, then its ``slurmd`` restarted and the
  node resumed (``start.sh --nodes 2``); every job on the node is requeued by Slurm. Two-node
  cluster only.

When every job has ended it prints, per cell and in total: cells finished, requeues, steps
lost beyond the checkpoint interval (for each resume: the newest complete checkpoint when the
run stopped, less the step the next run resumed from; must be 0) and whether the per-step
losses equal the reference's. Exit code 0 when every cell finished, none lost a step beyond
its checkpoint and every trajectory equals the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]

LAUNCH = REPO / "tools" / "launch.py"
START = REPO / "slurm" / "local-cluster" / "start.sh"
DEFAULT_OVERRIDES = ["train.steps=60", "train.log_every=1", "train.checkpoint_every=10",
                     "data.synthetic.num_videos=128", "optim.warmup_steps=5"]
FAULTS = ("requeue", "sigterm", "node")
NODE_PREFIX = "avbert-node"
# A resume as the training log says it, with the log line's local time.
RESUMED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+) .*resumed from step (\d+) of (\d+)", re.M)


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def say(message: str) -> None:
    print(f"[fault-inject {time.strftime('%H:%M:%S')}] {message}", flush=True)


def cluster_nodes() -> list[str]:
    """The cluster's nodes; exits with a hint when slurmctld does not answer."""
    ping = run("scontrol", "ping")
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        sys.exit("fault_inject: slurmctld does not answer; start the cluster with "
                 "slurm/local-cluster/start.sh --nodes 2 (or without --nodes for one node)")
    return run("sinfo", "-h", "-N", "-o", "%N").stdout.split()


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def newest_checkpoint(run_dir: Path) -> int:
    from avbert.train.checkpoint import latest_complete

    info = latest_complete(run_dir)
    return info.step if info is not None else 0


def queue() -> dict[str, tuple[str, str]]:
    """Job id -> (state, node list) of every queued or running job."""
    out = {}
    for line in run("squeue", "-h", "-o", "%i|%T|%N").stdout.splitlines():
        job_id, state, nodes = line.split("|")
        out[job_id] = (state, nodes)
    return out


class Grid:
    """The launched grid: cells by name, with job ids and run directories from the index."""

    def __init__(self, runs_dir: Path, experiment: str):
        self.runs_dir, self.experiment = runs_dir, experiment

    def index(self) -> dict:
        return json.loads((self.runs_dir / self.experiment / "index.json").read_text())

    def cells(self) -> dict[str, dict]:
        return self.index()["cells"]


def launch(experiment: Path, overrides: list[str], cluster: str, runs_dir: Path, profile: Optional[Path],
           background: bool = False):
    cmd = [sys.executable, str(LAUNCH), str(experiment), *overrides, "--cluster", cluster, "--runs-dir",
           str(runs_dir)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"fault_inject: launch failed:\n{result.stdout}\n{result.stderr}")
    return result


class Injector:
    """Applies faults and remembers, per cell, the newest complete checkpoint at each stop."""

    def __init__(self, grid: Grid, rng: random.Random, kinds: list[str], checkpoint_every: int):
        self.grid, self.rng, self.kinds, self.checkpoint_every = grid, rng, kinds, checkpoint_every
        self.applied: list[dict] = []
        # cell -> [(time, stop step, newest complete checkpoint at that stop)] of lost runs (no journal stop)
        self.lost_stops: dict[str, list[tuple[float, int, int]]] = {}

    def victims(self) -> list[tuple[str, str, str]]:
        """(cell, job id, node list) of running cells past their first checkpoint."""
        live = queue()
        out = []
        for name, entry in self.grid.cells().items():
            job_id = entry.get("job_id")
            if not job_id or live.get(job_id, ("", ""))[0] != "RUNNING":
                continue
            status = read_json(Path(entry["run_dir"]) / "status.json") or {}
            step, total = status.get("step") or 0, status.get("total_steps") or 0
            if status.get("state") == "running" and self.checkpoint_every < step < total - 5:
                out.append((name, job_id, live[job_id][1]))
        return out

    def inject(self) -> bool:
        candidates = self.victims()
        if not candidates:
            return False
        cell, job_id, nodes = self.rng.choice(candidates)
        kind = self.rng.choice(self.kinds)
        say(f"fault {len(self.applied) + 1}: {kind} on {cell} (job {job_id}, {nodes})")
        if kind == "requeue":
            result = run("scontrol", "requeue", job_id)
        elif kind == "sigterm":
            result = run("scancel", "--signal=TERM", job_id)
        else:
            result = self.lose_node(nodes.split(",")[0])
        if result.returncode != 0:
            say(f"  {kind} failed: {result.stderr.strip()}")
        self.applied.append({"kind": kind, "cell": cell, "job_id": job_id, "node": nodes, "ok": result.returncode == 0})
        return True

    def lose_node(self, node: str) -> subprocess.CompletedProcess:
        """Kill every process of the node, mark it DOWN, wait for its jobs to be requeued, bring it back."""
        on_node = {job_id for job_id, (state, nodes) in queue().items() if state == "RUNNING" and node in
                   run("scontrol", "show", "hostnames", nodes).stdout.split()}
        for pid in run("ip", "netns", "pids", node).stdout.split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        result = run("scontrol", "update", f"nodename={node}", "state=down", "reason=fault_inject: node lost")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(queue().get(j, ("",))[0] == "RUNNING" for j in on_node):
            time.sleep(1)
        for name, entry in self.grid.cells().items():
            if entry.get("job_id") in on_node:
                run_dir = Path(entry["run_dir"])
                step = (read_json(run_dir / "status.json") or {}).get("step") or 0
                self.lost_stops.setdefault(name, []).append((time.time(), step, newest_checkpoint(run_dir)))
                say(f"  {name} lost its run at step {step}; newest complete checkpoint {newest_checkpoint(run_dir)}")
        return result if result.returncode != 0 else restore_node(node)


def restore_node(node: str, tries: int = 3) -> subprocess.CompletedProcess:
    """Restart the node's slurmd and resume it (start.sh starts what is missing and resumes DOWN
    nodes). A slurmd started right after the kill may exit at once (start.sh then reports the node
    unusable): try again a few seconds later."""
    for attempt in range(1, tries + 1):
        restarted = run("bash", str(START), "--nodes", str(len(cluster_nodes())), timeout=300)
        run("scontrol", "update", f"nodename={node}", "state=resume")
        if restarted.returncode == 0:
            return restarted
        last = (restarted.stdout + restarted.stderr).strip().splitlines()
        say(f"  restarting {node}, try {attempt} of {tries}, failed: {last[-1] if last else ''}")
        time.sleep(5)
    return restarted


def wait_grid(grid: Grid, timeout_s: float, injector: Optional[Injector] = None, faults: int = 0,
              gap_s: tuple[float, float] = (5, 15)) -> dict[str, str]:
    """Wait until every job has left the queue, injecting ``faults`` faults meanwhile; job id -> final state."""
    deadline = time.monotonic() + timeout_s
    next_fault = time.monotonic() + random.uniform(*gap_s)
    while time.monotonic() < deadline:
        ids = [entry["job_id"] for entry in grid.cells().values() if entry.get("job_id")]
        live = queue()
        if injector is not None and len(injector.applied) < faults and time.monotonic() >= next_fault:
            if injector.inject():
                next_fault = time.monotonic() + injector.rng.uniform(*gap_s)
        if not any(job_id in live for job_id in ids):
            if injector is not None and len(injector.applied) < faults:
                say(f"grid ended after {len(injector.applied)} of {faults} faults (no running cell was left)")
            break
        time.sleep(1)
    else:
        sys.exit(f"fault_inject: grid not finished after {timeout_s}s")
    bases = sorted({job_id.split("_")[0] for job_id in ids})
    states = {}
    for line in run("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)).stdout.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id] = state.split()[0] if state else ""
    return {job_id: states.get(job_id, "UNKNOWN") for job_id in ids}


def resumes(log_text: str) -> list[tuple[float, int]]:
    """(time, step) of every resume in a job's logs, in time order."""
    found = [(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000, int(m.group(3)))
             for m in RESUMED.finditer(log_text)]
    return sorted(found)


def cell_report(name: str, entry: dict, state: str, reference_dir: Path, lost: list[tuple[float, int, int]]) -> dict:
    """Requeues, steps lost beyond the checkpoint interval and trajectory equality of one cell."""
    run_dir, job_id = Path(entry["run_dir"]), entry["job_id"]
    journal = read_json(run_dir / "job.json") or {"starts": [], "stops": []}
    starts = [s for s in journal["starts"] if s.get("job_id") == job_id]
    stops = [s for s in journal["stops"] if s.get("job_id") == job_id]
    log = Path(entry["log"]) if entry.get("log") else None
    log_text = "".join(p.read_text(errors="replace") for p in log.parent.glob(f"{job_id}_*")) if log else ""
    resumed_from = resumes(log_text)
    # The stops: those the job recorded (it saved at the stop: the newest checkpoint is the stop's
    # step) and those of lost runs (the newest complete checkpoint the injector saw). Each is matched
    # with the first resume after it: a node lost again before the job ran again shares that resume;
    # with no resume after it, the run started afresh, which loses nothing saved only when nothing
    # had been saved.
    ordered = sorted([(s["time"], s["step"], s["step"]) for s in stops if s.get("step") is not None] + list(lost))
    beyond, unmatched = 0, False
    for stopped_at, _step, ckpt in ordered:
        after = [step for when, step in resumed_from if when > stopped_at]
        if after:
            beyond += max(ckpt - after[0], 0)
        elif ckpt > 0:
            unmatched = True
    reference = losses(reference_dir)
    return {"cell": name, "state": state, "requeues": max(len(starts) - 1, 0), "stops": len(ordered),
            "resumes": len(resumed_from), "lost_beyond": None if unmatched else beyond,
            "equal": bool(reference) and losses(run_dir) == reference}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_inject", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides for every cell (default: {' '.join(DEFAULT_OVERRIDES)})")
    parser.add_argument("--faults", type=int, default=5, help="how many faults to inject (default 5)")
    parser.add_argument("--experiment", default=str(REPO / "experiments" / "smoke.yaml"))
    parser.add_argument("--profile", default=None,
                        help="cluster profile (default: local-2nodes.yaml on the two-node cluster, else local.yaml)")
    parser.add_argument("--runs-dir", default=None, help="where the two grids go (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the fault schedule")
    parser.add_argument("--kinds", default=",".join(FAULTS), help=f"fault kinds to choose from (default {FAULTS})")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each grid")
    args = parser.parse_args(argv)
    overrides = args.overrides or DEFAULT_OVERRIDES
    every = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("train.checkpoint_every=")), 10)

    nodes = cluster_nodes()
    two_nodes = len(nodes) >= 2 and all(node.startswith(NODE_PREFIX) for node in nodes)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = set(kinds) - set(FAULTS)
    if unknown or not kinds:
        sys.exit(f"fault_inject: unknown fault kinds {sorted(unknown)}; choose from {FAULTS}")
    if "node" in kinds and not two_nodes:
        say("the cluster has no namespaced nodes (start.sh --nodes 2): no node faults")
        kinds = [kind for kind in kinds if kind != "node"] or ["requeue"]
    profile = Path(args.profile) if args.profile else REPO / "slurm" / "profiles" / (
        "local-2nodes.yaml" if two_nodes else "local.yaml")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    random.seed(seed)
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="fault-inject-"))
    experiment = Path(args.experiment)
    name = experiment.stem
    say(f"cluster nodes {','.join(nodes)}; profile {profile.name}; {args.faults} faults of {kinds}; seed {seed}; "
        f"runs in {runs}")

    started = time.monotonic()
    reference = launch(experiment, overrides, "local", runs / "reference", None, background=True)
    launch(experiment, overrides, "slurm", runs / "faulted", profile)
    grid = Grid(runs / "faulted", name)
    say(f"launched {len(grid.cells())} cells on Slurm; reference grid running on this machine")
    injector = Injector(grid, rng, kinds, every)
    states = wait_grid(grid, args.timeout, injector, args.faults)
    out, _ = reference.communicate(timeout=args.timeout)
    if reference.returncode != 0:
        say(f"the reference launch failed:\n{out[-4000:]}")
    reference_cells = json.loads((runs / "reference" / name / "index.json").read_text())["cells"]

    reports = []
    for cell, entry in grid.cells().items():
        reports.append(cell_report(cell, entry, states.get(entry.get("job_id"), "UNKNOWN"),
                                   Path(reference_cells[cell]["run_dir"]), injector.lost_stops.get(cell, [])))
    print()
    print(f"{'cell':34} {'state':10} {'requeues':>8} {'stops':>5} {'resumes':>7} {'lost>ckpt':>9}  equal")
    for r in reports:
        lost = "?" if r["lost_beyond"] is None else str(r["lost_beyond"])
        print(f"{r['cell']:34} {r['state']:10} {r['requeues']:>8} {r['stops']:>5} {r['resumes']:>7} {lost:>9}  "
              f"{'yes' if r['equal'] else 'NO'}")
    finished = sum(1 for r in reports if r["state"] == "COMPLETED")
    requeues = sum(r["requeues"] for r in reports)
    lost_total = sum(r["lost_beyond"] or 0 for r in reports)
    unknown_lost = [r["cell"] for r in reports if r["lost_beyond"] is None]
    interrupted = [r for r in reports if r["stops"]]
    print()
    print(f"faults injected: {len(injector.applied)} of {args.faults} "
          f"({', '.join(a['kind'] + ':' + a['cell'] for a in injector.applied)})")
    print(f"cells finished: {finished}/{len(reports)}")
    print(f"requeues: {requeues}")
    print(f"steps lost beyond the checkpoint interval: {lost_total}"
          + (f" (not computable for {unknown_lost}: no resume after a stop that had a checkpoint)" if unknown_lost else ""))
    print(f"resumed trajectories equal to the uninterrupted ones: "
          f"{sum(r['equal'] for r in interrupted)}/{len(interrupted)} interrupted cells; "
          f"all cells equal: {all(r['equal'] for r in reports)}")
    print(f"elapsed: {time.monotonic() - started:.0f}s; seed {seed}; runs in {runs}")
    ok = finished == len(reports) and lost_total == 0 and not unknown_lost and all(r["equal"] for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
