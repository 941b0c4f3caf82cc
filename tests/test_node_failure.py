"""Losing a node of a running 2-node job (slurm/local-cluster/start.sh --nodes 2).

A node is lost the way a machine dies: every process in ``avbert-node2``'s namespace (its
``slurmd``, the job's ``slurmstepd`` and the training rank there) is killed with SIGKILL, and the
node is marked DOWN (``scontrol update ... state=down``: slurmctld would otherwise notice only
after ``SlurmdTimeout``, 300 s). Then ``start.sh --nodes 2`` restarts its ``slurmd``, which puts
the node back (``state=resume``).

What is relied on: the launcher submits every job with ``--requeue`` and the generated
slurm.conf keeps Slurm's default ``JobRequeue=1``, so Slurm requeues a batch job whose node
fails (sacct records the run as ``NODE_FAIL``); the requeued job waits for two nodes and
resumes from the newest complete checkpoint (no stop was recorded: the save at the stop never
happened). ``avbert.launch.job`` counts such lost runs; past the profile's ``requeue_limit``
the job fails at its next start, naming the node, and ``tools/status.py`` shows the message.
Inside a node's namespace the job cannot reach slurmdbd (it listens on the host's 127.0.0.1),
so there the node is named from slurmctld's view (the node whose slurmd restarted), not from
Slurm's node events.

Two jobs of the smoke experiment's ``xl`` pretraining (2 nodes x 1 task) lose the node
together: one with the profile's ``requeue_limit`` (3), which must finish with the losses of an
uninterrupted copy (launched while the node is down, run afterwards) and redo at most one
checkpoint interval of steps; one with ``requeue_limit: 0``, which must end FAILED.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch_slurm import job_ids, launch, losses, read_index, run, wait_step, wait_terminal
from test_two_nodes import NODES, ONE_NODE, PROFILE, START, TWO_NODES, two_nodes  # noqa: F401 (fixture)
from test_two_nodes import pytestmark  # noqa: F401 (the two-node tests' markers and skip conditions)

REPO = Path(__file__).resolve().parents[1]
CELL = "smoke/xl/pretrain"
STEPS = 60
CHECKPOINT_EVERY = 10
LOSE_AT = 15  # the node is lost after this step
LOST_NODE = NODES[1]
REASON = "test_node_failure: node lost"
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", f"train.checkpoint_every={CHECKPOINT_EVERY}",
             "data.synthetic.num_videos=128", "optim.warmup_steps=5"]

def lose_node(node: str, reason: str) -> None:
    """Kill every process in the node's network namespace and mark the node DOWN."""
    pids = run("ip", "netns", "pids", node).stdout.split()
    assert pids, f"no process in namespace {node}: is its slurmd running?"
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    down = run("scontrol", "update", f"nodename={node}", "state=down", f"reason={reason}")
    assert down.returncode == 0, down.stderr


def restore_node(node: str, tries: int = 3) -> None:
    """Restart the node's slurmd (start.sh starts what is missing and resumes DOWN nodes). A slurmd
    started right after the kill may exit at once (start.sh then reports the node unusable): retried."""
    for _ in range(tries):
        started = subprocess.run(["bash", str(START), "--nodes", "2"], capture_output=True, text=True, timeout=300,
                                 check=False)
        if started.returncode == 0:
            break
        time.sleep(5)
    assert started.returncode == 0, started.stdout + started.stderr
    run("scontrol", "update", f"nodename={node}", "state=resume")  # a no-op when start.sh did it
    state = run("sinfo", "-h", "-n", node, "-o", "%T").stdout.strip()
    assert state in ("idle", "mixed", "allocated"), state


@pytest.fixture(scope="module")
def node_lost(two_nodes, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """Both jobs lose the node once; the reference runs after it is back. Returns the paths and job ids."""
    tmp = tmp_path_factory.mktemp("node-failure")
    experiment = tmp / "smoke.yaml"
    text = (REPO / "experiments" / "smoke.yaml").read_text()
    assert text.count(ONE_NODE) == 1, "experiments/smoke.yaml changed its pretrain resources; update ONE_NODE"
    experiment.write_text(text.replace(ONE_NODE, TWO_NODES))
    no_requeue = tmp / "no-requeue.yaml"
    no_requeue.write_text(PROFILE.read_text().replace("name: local-2nodes", "name: no-requeue")
                          .replace("requeue_limit: 3", "requeue_limit: 0"))
    assert "requeue_limit: 0" in no_requeue.read_text()

    def submit(name: str, profile: Path) -> tuple[str, Path]:
        result = launch(str(experiment), *OVERRIDES, "--cluster", "slurm", "--profile", str(profile),
                        "--runs-dir", str(tmp / name), "--only", "xl/pretrain", cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        index = read_index(tmp / name, "smoke")
        job = (job_ids(index)[CELL], Path(index["cells"][CELL]["run_dir"]))
        two_nodes.append(job[0])
        return job

    jobs = {"resumed": submit("resumed", PROFILE), "limited": submit("limited", no_requeue)}
    for _, run_dir in jobs.values():
        wait_step(run_dir, LOSE_AT, timeout_s=300)
    lose_node(LOST_NODE, REASON)
    try:
        deadline = time.monotonic() + 60
        while True:
            states = run("squeue", "-h", "-o", "%i %T", "-j", ",".join(j for j, _ in jobs.values())).stdout.split()
            if states and set(states[1::2]) == {"PENDING"}:
                break  # both requeued
            assert time.monotonic() < deadline, f"jobs not requeued after the node loss: {states}"
            time.sleep(1)
        failed = run("sacct", "-X", "-n", "-P", "-D", "-o", "JobID,State", "-j", jobs["resumed"][0]).stdout
        assert "NODE_FAIL" in failed, failed
        # The last step the lost run reported (metrics.jsonl is cut back to the checkpoint on resume).
        stopped_at = json.loads((jobs["resumed"][1] / "status.json").read_text())["step"]
        jobs["reference"] = submit("reference", PROFILE)
    finally:
        restore_node(LOST_NODE)
    states = wait_terminal([job_id for job_id, _ in jobs.values()], timeout_s=600)
    return {"tmp": tmp, "jobs": jobs, "states": states, "stopped_at": stopped_at}


def test_a_lost_node_requeues_the_job_and_it_resumes_from_the_last_checkpoint(node_lost):
    jobs, states = node_lost["jobs"], node_lost["states"]
    (resumed_id, resumed_dir), (reference_id, reference_dir) = jobs["resumed"], jobs["reference"]
    assert states[resumed_id] == "COMPLETED" and states[reference_id] == "COMPLETED", states
    expected = losses(reference_dir)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert losses(resumed_dir) == expected

    stopped_at = node_lost["stopped_at"]
    assert LOSE_AT <= stopped_at < STEPS
    logs = "".join(path.read_text(errors="replace")
                   for path in (node_lost["tmp"] / "resumed" / "smoke" / "logs").glob(f"{resumed_id}_*"))
    resumed = re.findall(rf"resumed from step (\d+) of {STEPS}", logs)
    assert len(resumed) == 1, logs[-4000:]
    resumed_from = int(resumed[0])
    # The newest checkpoint at or before the stop: at most one interval of steps is redone.
    assert resumed_from % CHECKPOINT_EVERY == 0 and 0 <= stopped_at - resumed_from <= CHECKPOINT_EVERY, \
        (stopped_at, resumed_from)
    journal = json.loads((resumed_dir / "job.json").read_text())
    assert len(journal["starts"]) == 2 and journal["stops"] == [], journal  # the lost run recorded no stop
    assert journal["starts"][1]["slurm_restart_count"] == 1, journal
    status = json.loads((resumed_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["hosts"] == NODES, status


def test_a_lost_node_past_the_requeue_limit_fails_naming_the_node(node_lost):
    limited_id, limited_dir = node_lost["jobs"]["limited"]
    assert node_lost["states"][limited_id] == "FAILED", node_lost["states"]
    journal = json.loads((limited_dir / "job.json").read_text())
    stop = journal["stops"][-1]
    # Named from Slurm's node events (with the DOWN reason) where the job reaches slurmdbd, else as the
    # node whose slurmd restarted; the surviving node is not named.
    assert stop["cause"] == "lost_runs_limit" and LOST_NODE in stop["message"], stop
    assert NODES[0] not in stop["message"], stop
    logs = "".join(path.read_text(errors="replace")
                   for path in (node_lost["tmp"] / "limited" / "smoke" / "logs").glob(f"{limited_id}_*"))
    assert "LostRunsLimit" in logs and LOST_NODE in logs, logs[-4000:]

    from avbert.launch.status import gather

    cell = gather(read_index(node_lost["tmp"] / "limited", "smoke"))[CELL]
    assert cell.state == "FAILED" and LOST_NODE in cell.detail and "requeue_limit 0" in cell.detail, cell
    shown = subprocess.run([sys.executable, str(REPO / "tools" / "status.py"), "smoke", "--runs-dir",
                            str(node_lost["tmp"] / "limited")], capture_output=True, text=True, timeout=120,
                           check=False, cwd=REPO)
    assert shown.returncode == 0 and "FAILED" in shown.stdout and "lost 1 runs" in shown.stdout, shown.stdout
