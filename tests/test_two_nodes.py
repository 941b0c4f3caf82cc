"""A two-node job on the local cluster in network namespaces (slurm/local-cluster/start.sh --nodes 2).

The module's fixture switches the local cluster to two nodes, ``avbert-node1`` and
``avbert-node2``, each a network namespace with its own host name, and back to the
single node afterwards (or stops it, if no cluster was running). The test launches the
smoke experiment's ``xl`` pretraining as a 2-node x 1-task job through ``tools/launch.py``,
as on a real cluster: submitit, ``srun``, the rendezvous address taken from the job's node
list, gloo between the namespaces. Two copies of the cell run side by side: one
uninterrupted, one requeued by ``scontrol requeue`` mid-run, so that both ranks save a
checkpoint, each on its node, and the requeued job resumes from it. The ranks must report
the two node names, and the per-step losses of both copies must be equal.

Skipped without ``sbatch``, without root, or where network namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_launch_slurm import job_ids, launch, losses, read_index, run, wait_step, wait_terminal

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "local-cluster" / "start.sh"
STOP = REPO / "slurm" / "local-cluster" / "stop.sh"
PROFILE = REPO / "slurm" / "profiles" / "local-2nodes.yaml"
NODES = ["avbert-node1", "avbert-node2"]
CELL = "smoke/xl/pretrain"
STEPS = 60
REQUEUE_AT = 10  # the requeue comes after this step, well before the last
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=30",
             "data.synthetic.num_videos=128", "optim.warmup_steps=5"]
# The smoke pretraining's resources, asking two nodes instead of one.
ONE_NODE = "resources: {nodes: 1, gpus_per_node: 0, time_limit_min: 10, hours: 0.02}"
TWO_NODES = ONE_NODE.replace("nodes: 1", "nodes: 2")


def _netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "'ip' (iproute2) is not on PATH"
    name = f"avbert-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None,
                       reason="sbatch is not on PATH (no Slurm client); slurm/local-cluster/start.sh installs one"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the two-node cluster needs root (network namespaces)"),
]


def _cluster_up() -> bool:
    ping = run("scontrol", "ping")
    return ping.returncode == 0 and "is UP" in ping.stdout


def _wait_queue_empty(timeout_s: float) -> None:
    """start.sh refuses to switch modes while jobs are queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = run("squeue", "-h", "-o", "%i %j %T")
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(2)
    pytest.fail(f"jobs still queued after {timeout_s}s, so the cluster cannot switch modes: {queue.stdout}")


def _cluster_script(*args: str) -> None:
    result = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def two_nodes():
    """The local cluster with two namespaced nodes; afterwards as it was (one node, or stopped).

    Yields a list for the ids of the jobs the tests submit: those still queued at the end
    (a test that failed early) are cancelled, so that the cluster can switch back."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(f"network namespaces cannot be created here ({reason}); the two-node cluster needs them")
    was_up = _cluster_up()
    if was_up:
        _wait_queue_empty(120)
    jobs: list[str] = []
    try:
        _cluster_script(START, "--nodes", "2")
        yield jobs
    finally:
        if _cluster_up():
            for job_id in jobs:
                run("scancel", job_id)
            _wait_queue_empty(120)
        if was_up:
            _cluster_script(START)
        else:
            _cluster_script(STOP)


def test_two_node_job_runs_one_rank_per_namespace_and_resumes_exactly(two_nodes, tmp_path):
    nodes = run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split()
    assert nodes[0::2] == NODES and set(nodes[1::2]) == {"idle"}, nodes
    experiment = tmp_path / "smoke.yaml"
    text = (REPO / "experiments" / "smoke.yaml").read_text()
    assert text.count(ONE_NODE) == 1, "experiments/smoke.yaml changed its pretrain resources; update ONE_NODE"
    experiment.write_text(text.replace(ONE_NODE, TWO_NODES))

    submitted = {}
    for name in ("reference", "requeued"):
        result = launch(str(experiment), *OVERRIDES, "--cluster", "slurm", "--profile", str(PROFILE),
                        "--runs-dir", str(tmp_path / name), "--only", "xl/pretrain", cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        index = read_index(tmp_path / name, "smoke")
        assert list(job_ids(index)) == [CELL], index
        submitted[name] = (job_ids(index)[CELL], Path(index["cells"][CELL]["run_dir"]))
        two_nodes.append(submitted[name][0])
    requeued_id, requeued_dir = submitted["requeued"]
    script = next((tmp_path / "requeued" / "smoke" / "logs").glob("*_submission.sh")).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script, script

    wait_step(requeued_dir, REQUEUE_AT, timeout_s=300)
    requeue = run("scontrol", "requeue", requeued_id)
    assert requeue.returncode == 0, requeue.stderr
    states = wait_terminal([job_id for job_id, _ in submitted.values()], timeout_s=600)
    assert set(states.values()) == {"COMPLETED"}, states

    for name, (job_id, run_dir) in submitted.items():
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "completed" and status["world_size"] == 2, (name, status)
        assert status["hosts"] == NODES, (name, status)  # rank 0 on the first node, rank 1 on the second
    expected = losses(submitted["reference"][1])
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert losses(requeued_dir) == expected

    journal = json.loads((requeued_dir / "job.json").read_text())
    assert len(journal["starts"]) >= 2 and journal["stops"][0]["cause"] == "terminated", journal
    stopped_at = journal["stops"][0]["step"]
    assert REQUEUE_AT <= stopped_at < STEPS, journal
    assert {start["host"] for start in journal["starts"]} == {NODES[0]}, journal  # rank 0 records the starts
    # The second start resumed from the checkpoint both ranks saved when the requeue stopped them.
    logs = "".join(path.read_text(errors="replace")
                   for path in (tmp_path / "requeued" / "smoke" / "logs").glob(f"{requeued_id}_*"))
    assert f"resumed from step {stopped_at} of {STEPS}" in logs, logs[-4000:]
