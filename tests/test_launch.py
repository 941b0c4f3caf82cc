"""Launching without a real cluster: profiles, resources, the sbatch files, plans, idempotency.

Slurm's client commands are replaced by small scripts (``fake_slurm``): ``sbatch``
keeps each submitted file and answers with a job id, ``squeue`` and ``sacct``
report states the test sets. The real cluster is exercised in test_launch_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from avbert.config import ConfigError
from avbert.launch import launcher
from avbert.launch.index import record_submission, snapshot_code
from avbert.rundir.index import read_index, write_index
from avbert.launch.actions import make_plan
from avbert.launch.profile import load_profile
from avbert.launch.grid import expand
from avbert.launch.resources import StageResources, resolve_resources
from avbert.launch.spec import read_experiment
from avbert.launch.status import CellStatus, gather, slurm_states
from avbert.launch.submit import array_name, mem_text, slurm_groups
from avbert.rundir.state import PREEMPT_REQUEUE_GRACE_S

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "slurm" / "profiles"
EXPERIMENTS = REPO / "experiments"
GOLDEN = REPO / "tests" / "golden" / "sharing_ablation_paper_8x8.sbatch"
FIRST_JOB = 990001  # far from the ids of any real cluster the tests may also talk to

FAKE_SBATCH = f"""#!/bin/sh
n=$(cat "$FAKE_SLURM/counter" 2>/dev/null || echo {FIRST_JOB - 1}); n=$((n+1)); echo $n > "$FAKE_SLURM/counter"
cp "$1" "$FAKE_SLURM/sbatch_$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SQUEUE = """#!/bin/sh
grep -E '\\|(PENDING|RUNNING)$' "$FAKE_SLURM/states" 2>/dev/null || true
"""
FAKE_SACCT = """#!/bin/sh
cat "$FAKE_SLURM/states" 2>/dev/null || true
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/squeue/sacct/srun stand-ins first on PATH; returns their state directory."""
    state = tmp_path / "fake_slurm"
    bin_dir = state / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT), ("srun", "#!/bin/sh\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_SLURM", str(state))
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return state


@pytest.fixture
def launch_dir(tmp_path, monkeypatch):
    """A launch directory with (empty) paper-scale manifests."""
    (tmp_path / "manifests").mkdir()
    for name in ("kinetics700", "kinetics_sounds"):
        (tmp_path / "manifests" / f"{name}.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def normalise(text: str, runs: Path) -> str:
    text = text.replace(str(runs), "/RUNS")
    text = re.sub(r"/code/[0-9]{8}-[0-9]{6}[^/$\s]*", "/code/SNAPSHOT", text)
    return text.replace(sys.executable, "python")


# -- profiles and resources ---------------------------------------------------------------------------------------
def test_shipped_profiles_load():
    local, paper = load_profile(PROFILES / "local.yaml"), load_profile(PROFILES / "paper-8x8.yaml")
    assert (local.nodes, local.gpus_per_node, local.tasks_per_node) == (1, 0, 1)
    assert (paper.nodes, paper.gpus_per_node, paper.tasks_per_node) == (8, 8, 8)
    assert paper.signal_delay_s >= 30 and paper.time_limit_min >= 2


def test_one_task_per_gpu_and_profile_defaults():
    paper = load_profile(PROFILES / "paper-8x8.yaml")
    res = resolve_resources(StageResources(nodes=2), paper, "exp.yaml", "r")
    assert (res.nodes, res.gpus_per_node, res.tasks_per_node, res.world_size, res.gpus) == (2, 8, 8, 16, 16)
    assert res.time_limit_min == paper.time_limit_min and res.requeue_limit == paper.requeue_limit
    cpu = resolve_resources(StageResources(gpus_per_node=0), paper, "exp.yaml", "r")
    assert (cpu.tasks_per_node, cpu.gpus) == (1, 0)
    assert resolve_resources(StageResources(hours=3), paper, "e", "r").gpu_hours == 8 * 8 * 3
    with pytest.raises(ConfigError) as err:
        resolve_resources(StageResources(gpus_per_node=16), paper, "exp.yaml", "scales.paper.stages.x.resources")
    assert err.value.key == "scales.paper.stages.x.resources.gpus_per_node"


# -- the sbatch files: golden, through the real submission path -------------------------------------------------------
def test_paper_scale_sbatch_files_match_golden(fake_slurm, launch_dir):
    runs = launch_dir / "runs"
    rc = launcher.main([str(EXPERIMENTS / "sharing_ablation.yaml"), "--cluster", "slurm", "--runs-dir", str(runs),
                        "--profile", str(PROFILES / "paper-8x8.yaml")])
    assert rc == 0
    files = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(files) == 5  # one array of the four pretraining cells, four dependent fine-tuning jobs
    text = "".join(f"==> {f.name} <==\n{normalise(f.read_text(), runs)}" for f in files)
    if os.environ.get("AVBERT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch files changed; AVBERT_UPDATE_GOLDEN=1 rewrites the golden file"


def test_submission_is_recorded_and_downstream_waits_for_its_own_pretraining(fake_slurm, launch_dir):
    runs = launch_dir / "runs"
    argv = [str(EXPERIMENTS / "sharing_ablation.yaml"), "--runs-dir", str(runs),
            "--profile", str(PROFILES / "paper-8x8.yaml")]
    assert launcher.main(argv) == 0
    index = read_index(runs / "sharing_ablation")
    cells = index["cells"]
    variants = ("none", "xl", "xl-all", "xl-part")
    assert [cells[f"sharing_ablation/{v}/pretrain"]["job_id"] for v in variants] == [f"{FIRST_JOB}_{i}" for i in range(4)]
    for i, variant in enumerate(variants):
        ks = cells[f"sharing_ablation/{variant}/kinetics_sounds"]
        script = (fake_slurm / f"sbatch_{ks['job_id']}.sh").read_text()
        assert f"--dependency=afterok:{FIRST_JOB}_{i}\n" in script
        assert f"--job-name=sharing_ablation:{variant}:kinetics_sounds\n" in script
        assert ks["log"].endswith(f"logs/{ks['job_id']}_0_log.out") and ks["state"] == "SUBMITTED"
    code_dir = Path(index["launches"][0]["code_dir"])
    assert (code_dir / "avbert" / "launch" / "job.py").is_file() and (code_dir / "tools" / "launch.py").is_file()
    assert not list(code_dir.rglob("__pycache__"))
    config = (runs / "sharing_ablation" / "xl-part" / "pretrain" / "config.yaml").read_text()
    assert "git_commit:" in config and f"run_dir: {runs}/sharing_ablation/xl-part/pretrain" in config


def test_stages_waiting_for_one_pretraining_go_out_as_arrays(fake_slurm, launch_dir):
    for name in ("ucf101", "esc50", "kinetics700", "audioset"):
        (launch_dir / "manifests" / f"{name}.jsonl").write_text("")
    runs = launch_dir / "runs"
    assert launcher.main([str(EXPERIMENTS / "downstream.yaml"), "--runs-dir", str(runs), "--only", "k700",
                          "--profile", str(PROFILES / "paper-8x8.yaml")]) == 0
    files = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(files) == 3  # pretraining, then an array per resource shape: UCF101's six stages, ESC-50's ten
    for path, count in zip(files[1:], (6, 10)):
        text = path.read_text()
        assert f"--array=0-{count - 1}%{count}\n" in text and f"--dependency=afterok:{FIRST_JOB}\n" in text
        assert f"--job-name='downstream:k700:[{count} stages]'" in text
    cells = read_index(runs / "downstream")["cells"]
    assert cells["downstream/k700/esc50-linear-fold5"]["job_id"].startswith(f"{FIRST_JOB + 2}_")


def test_local_runs_refuse_multi_node_stages(launch_dir, capsys):
    profile = launch_dir / "two-nodes.yaml"
    profile.write_text((PROFILES / "local.yaml").read_text().replace("nodes: 1", "nodes: 2"))
    experiment = launch_dir / "wide.yaml"
    experiment.write_text((EXPERIMENTS / "smoke.yaml").read_text().replace(
        "resources: {nodes: 1, gpus_per_node: 0, time_limit_min: 10, hours: 0.02}",
        "resources: {nodes: 2, gpus_per_node: 0, time_limit_min: 10, hours: 0.02}"))
    rc = launcher.main([str(experiment), "--cluster", "local", "--profile", str(profile), "--dry-run"])
    assert rc == 2 and "scales.tiny.stages.pretrain.resources.nodes" in capsys.readouterr().err


def test_relaunch_skips_queued_and_completed_and_retries_failed_only_when_asked(fake_slurm, launch_dir):
    runs = launch_dir / "runs"
    argv = [str(EXPERIMENTS / "smoke.yaml"), "--runs-dir", str(runs)]
    assert launcher.main(argv) == 0
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 4  # pretraining array, the probe from scratch, two probes
    index = read_index(runs / "smoke")
    ids = {name: cell["job_id"] for name, cell in index["cells"].items()}
    states = {ids["smoke/xl/pretrain"]: "RUNNING", ids["smoke/xl-part/pretrain"]: "FAILED",
              ids["smoke/xl/synthetic_eval"]: "PENDING", ids["smoke/xl-part/synthetic_eval"]: "CANCELLED"}
    (fake_slurm / "states").write_text("".join(f"{j}|{s}\n" for j, s in states.items()))
    assert launcher.main(argv) == 0
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 4  # nothing new
    assert read_index(runs / "smoke")["cells"]["smoke/xl-part/pretrain"]["state"] == "FAILED"

    assert launcher.main([*argv, "--retry-failed"]) == 0
    new = sorted(fake_slurm.glob("sbatch_*.sh"))[4:]
    assert len(new) == 2  # the failed pretraining, and its probe waiting for the new job
    index = read_index(runs / "smoke")
    retried = index["cells"]["smoke/xl-part/pretrain"]
    assert retried["job_id"] != ids["smoke/xl-part/pretrain"] and retried["history"][0]["state"] == "FAILED"
    assert f"--dependency=afterok:{retried['job_id']}\n" in new[1].read_text()
    assert index["cells"]["smoke/xl/pretrain"]["job_id"] == ids["smoke/xl/pretrain"]


def test_a_preempted_job_never_requeued_is_retried_when_asked(fake_slurm, launch_dir):
    """sacct keeps saying PREEMPTED for a job that Slurm did not requeue (PreemptMode=CANCEL): once
    its run has been quiet past the grace, the cell failed and --retry-failed submits it again; a
    job preempted just now may still come back, and stays live."""
    runs = launch_dir / "runs"
    argv = [str(EXPERIMENTS / "smoke.yaml"), "--runs-dir", str(runs), "--only", "xl/pretrain", "xl-part/pretrain"]
    assert launcher.main(argv) == 0
    index = read_index(runs / "smoke")
    ids = {name: cell["job_id"] for name, cell in index["cells"].items() if cell.get("job_id")}
    for name in ids:  # submitted an hour ago
        index["cells"][name]["submitted_unix"] -= 3600
    write_index(runs / "smoke", index)
    (fake_slurm / "states").write_text(f"{ids['smoke/xl/pretrain']}|PREEMPTED\n{ids['smoke/xl-part/pretrain']}|PREEMPTED\n")
    for variant, quiet in (("xl", 60), ("xl-part", PREEMPT_REQUEUE_GRACE_S + 60)):
        (runs / "smoke" / variant / "pretrain" / "status.json").write_text(json.dumps(
            {"state": "preempted", "step": 3, "total_steps": 10, "updated_unix": time.time() - quiet}))
    assert launcher.main(argv) == 0
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 1  # nothing new
    index = read_index(runs / "smoke")
    assert (index["cells"]["smoke/xl/pretrain"]["state"], index["cells"]["smoke/xl-part/pretrain"]["state"]) == (
        "PREEMPTED", "FAILED")
    plan = {p.cell.name: p for p in make_plan(smoke_cells(runs), gather(index, list(ids)), selected=set(ids))}
    assert plan["smoke/xl-part/pretrain"].reason == (
        "failed (preempted and not requeued); --retry-failed submits it again")
    assert plan["smoke/xl/pretrain"].reason == f"preempted as job {ids['smoke/xl/pretrain']}"

    assert launcher.main([*argv, "--retry-failed"]) == 0
    cells = read_index(runs / "smoke")["cells"]
    assert cells["smoke/xl-part/pretrain"]["job_id"] != ids["smoke/xl-part/pretrain"]
    assert cells["smoke/xl/pretrain"]["job_id"] == ids["smoke/xl/pretrain"]  # live: never submitted twice


def test_a_preempted_job_stays_live_while_squeue_does_not_answer(fake_slurm):
    """sacct's PREEMPTED alone does not say the job was not requeued: without squeue's answer
    the job counts as requeued (live), so no second copy is ever submitted."""
    (fake_slurm / "states").write_text("41|PREEMPTED\n42|COMPLETED\n")
    assert slurm_states(["41", "42"]) == {"41": "PREEMPTED", "42": "COMPLETED"}
    (fake_slurm / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: timeout' >&2\nexit 1\n")
    assert slurm_states(["41", "42"]) == {"41": "REQUEUED", "42": "COMPLETED"}


def test_dry_run_writes_and_submits_nothing(fake_slurm, launch_dir, capsys):
    runs = launch_dir / "runs"
    assert launcher.main([str(EXPERIMENTS / "smoke.yaml"), "--dry-run", "--runs-dir", str(runs)]) == 0
    assert not runs.exists() and not list(fake_slurm.glob("sbatch_*.sh"))
    out = capsys.readouterr().out
    assert "submitting to Slurm" in out and "xl-part/synthetic_eval" in out and "5 of 5 cells to submit" in out


def test_without_sbatch_it_says_it_runs_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert launcher.main([str(EXPERIMENTS / "smoke.yaml"), "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    assert "sbatch is not on PATH: running on this machine" in capsys.readouterr().out
    assert launcher.main([str(EXPERIMENTS / "smoke.yaml"), "--cluster", "slurm", "--runs-dir", str(tmp_path)]) == 2


def test_a_runs_dir_holds_one_scale(fake_slurm, launch_dir, capsys):
    runs = launch_dir / "runs"
    (runs / "sharing_ablation").mkdir(parents=True)
    (runs / "sharing_ablation" / "index.json").write_text(json.dumps({"scale": "tiny", "cells": {}}))
    rc = launcher.main([str(EXPERIMENTS / "sharing_ablation.yaml"), "--runs-dir", str(runs),
                        "--profile", str(PROFILES / "paper-8x8.yaml"), "--dry-run"])
    assert rc == 2 and "holds tiny-scale runs" in capsys.readouterr().err


# -- plans --------------------------------------------------------------------------------------------------------
def smoke_cells(tmp_path):
    return expand(read_experiment(EXPERIMENTS / "smoke.yaml"), "tiny", load_profile(PROFILES / "local.yaml"), tmp_path)


def test_plan_decisions(tmp_path):
    cells = smoke_cells(tmp_path)
    statuses = {"smoke/xl/pretrain": CellStatus("smoke/xl/pretrain", "COMPLETED"),
                "smoke/xl-part/pretrain": CellStatus("smoke/xl-part/pretrain", "FAILED", "TIMEOUT", "7_1")}
    plan = {p.cell.name: p for p in make_plan(cells, statuses)}
    assert (plan["smoke/xl/pretrain"].action, plan["smoke/xl/synthetic_eval"].action) == ("skip", "submit")
    assert plan["smoke/xl/synthetic_eval"].wait_for is None  # its pretraining is done
    assert plan["smoke/xl-part/pretrain"].action == "skip" and "--retry-failed" in plan["smoke/xl-part/pretrain"].reason
    assert plan["smoke/xl-part/synthetic_eval"].action == "blocked"
    retry = {p.cell.name: p for p in make_plan(cells, statuses, retry_failed=True)}
    assert retry["smoke/xl-part/pretrain"].action == "submit"
    assert retry["smoke/xl-part/synthetic_eval"].wait_for == "smoke/xl-part/pretrain"
    live = {"smoke/xl/pretrain": CellStatus("smoke/xl/pretrain", "RUNNING", job_id="9")}
    only = make_plan(cells, live, selected={"smoke/xl/synthetic_eval", "smoke/xl-part/synthetic_eval"})
    assert [(p.action, p.wait_for) for p in only] == [("submit", "smoke/xl/pretrain"), ("blocked", None)]


def test_cells_sharing_resources_go_out_as_one_array(tmp_path):
    plan = make_plan(smoke_cells(tmp_path), {})
    groups = slurm_groups(plan)
    assert [[p.cell.name for p in g] for g in groups] == [
        ["smoke/xl/pretrain", "smoke/xl-part/pretrain"], ["smoke/scratch/synthetic_eval"],  # waiting for nothing
        ["smoke/xl/synthetic_eval"], ["smoke/xl-part/synthetic_eval"]]
    assert array_name([p.cell for p in groups[0]]) == "smoke:[xl,xl-part]:pretrain"


# -- index --------------------------------------------------------------------------------------------------------
def test_resubmission_keeps_history_and_snapshot_copies_code(tmp_path):
    cell = smoke_cells(tmp_path)[0]
    index = {"cells": {}, "launches": []}
    record_submission(index, cell, "slurm", "5_0", "log", tmp_path, "abc", "n")
    index["cells"][cell.name]["state"] = "FAILED"
    record_submission(index, cell, "slurm", "9_0", "log", tmp_path, "abc", "n")
    entry = index["cells"][cell.name]
    assert entry["job_id"] == "9_0" and entry["history"] == [
        {"job_id": "5_0", "cluster": "slurm", "submitted": entry["history"][0]["submitted"], "state": "FAILED"}]
    code = snapshot_code(tmp_path / "exp", "0123456789abcdef")
    assert code.name.endswith("-0123456") and (code / "avbert" / "launch" / "launcher.py").is_file()
    assert snapshot_code(tmp_path / "exp", "0123456789abcdef") != code


# -- overrides at launch ------------------------------------------------------------------------------------------
def test_overrides_reach_every_cell_and_a_bad_one_names_the_command_line(tmp_path):
    exp, profile = read_experiment(EXPERIMENTS / "smoke.yaml"), load_profile(PROFILES / "local.yaml")
    cells = expand(exp, "tiny", profile, tmp_path, overrides=("train.steps=7", "optim.lr=0.002"))
    assert {(c.config.train.steps, c.config.optim.lr) for c in cells} == {(7, 0.002)}  # stage settings overridden
    with pytest.raises(ConfigError) as err:
        expand(exp, "tiny", profile, tmp_path, overrides=("model.fusion=middle",))
    assert err.value.source == "command line" and err.value.key == "model.fusion"


def test_a_cell_whose_config_changed_since_it_ran_is_not_resubmitted_unless_asked(tmp_path, capsys):
    from avbert.config import dump_yaml

    runs = tmp_path / "runs"
    for cell in expand(read_experiment(EXPERIMENTS / "smoke.yaml"), "tiny", load_profile(PROFILES / "local.yaml"),
                       runs):  # what an earlier launch ran with
        cell.run_dir.mkdir(parents=True)
        dump_yaml(cell.config, cell.run_dir / "config.yaml")
    cells = launcher.changed_cells(expand(read_experiment(EXPERIMENTS / "smoke.yaml"), "tiny",
                                          load_profile(PROFILES / "local.yaml"), runs, overrides=("optim.lr=0.002",)))
    assert cells and all(keys == ["optim.lr"] for keys in cells.values())
    argv = [str(EXPERIMENTS / "smoke.yaml"), "optim.lr=0.002", "--dry-run", "--cluster", "local", "--runs-dir", str(runs)]
    assert launcher.main(argv) == 0
    out = capsys.readouterr().out
    assert "overrides for every cell: optim.lr=0.002" in out and "changed since it ran (optim.lr)" in out
    plain = launcher.changed_cells(expand(read_experiment(EXPERIMENTS / "smoke.yaml"), "tiny",
                                          load_profile(PROFILES / "local.yaml"), runs))
    assert plain == {}  # the same launch again: nothing changed (the commit is not compared)


def test_rerun_changed_submits_the_changed_cells_and_sets_their_old_runs_aside(tmp_path):
    cells = smoke_cells(tmp_path)
    changed = {cells[0].name: ["optim.lr"]}
    statuses = {cells[0].name: CellStatus(cells[0].name, "COMPLETED")}
    kept = make_plan(cells, statuses, changed=changed)[0]
    assert (kept.action, kept.reason) == ("skip", "changed since it ran (optim.lr); --rerun-changed runs it again")
    rerun = make_plan(cells, statuses, changed=changed, rerun_changed=True)[0]
    assert rerun.submit and "runs again from scratch" in rerun.reason
    live = make_plan(cells, {cells[0].name: CellStatus(cells[0].name, "RUNNING", job_id="5")}, changed=changed,
                     rerun_changed=True)[0]
    assert not live.submit and "cancel it first" in live.reason
    cells[0].run_dir.mkdir(parents=True)
    (cells[0].run_dir / "config.yaml").write_text("x: 1\n")
    moved = launcher.set_aside(cells[0].run_dir)
    assert not cells[0].run_dir.exists() and (moved / "config.yaml").is_file() and ".replaced-" in moved.name


# -- hostile experiment files -------------------------------------------------------------------------------------
def billion_laughs(path: Path) -> Path:
    """About 1 kB of YAML whose nested aliases stand for 10^10 values."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path.write_text("\n".join(lines) + "\nname: laughs\n")
    return path


@pytest.mark.parametrize("kind", ["binary", "aliases"])
def test_a_hostile_experiment_file_is_refused_naming_it(tmp_path, capsys, kind):
    if kind == "binary":
        path = tmp_path / "binary.yaml"
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path = billion_laughs(tmp_path / "laughs.yaml")
    assert launcher.main([str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err.replace("\n", "") and ("not a text file" in err or "aliases" in err), err


def test_local_slots_divide_the_cores_by_the_cores_a_job_takes():
    from dataclasses import replace

    from avbert.launch.submit import local_slots

    profile = load_profile(PROFILES / "local.yaml")  # 1 task of 1 core
    assert local_slots(profile, cores=2) == 2 and local_slots(profile, cores=1) == 1
    assert local_slots(replace(profile, cpus_per_task=4), cores=16) == 4
    assert local_slots(replace(profile, cpus_per_task=4), cores=2) == 1  # never none


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: the local executor runs one cell at a time")
def test_local_cells_run_side_by_side_and_each_after_its_upstream(tmp_path):
    import subprocess

    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([sys.executable, "tools/launch.py", str(EXPERIMENTS / "smoke.yaml"), "--cluster", "local",
                             "--runs-dir", str(runs), "train.steps=4", "data.synthetic.num_videos=64",
                             "--only", "xl", "xl-part"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def span(variant: str, stage: str) -> tuple[float, float]:
        run_dir = runs / "smoke" / variant / stage
        start = json.loads((run_dir / "job.json").read_text())["starts"][0]["time"]
        return start, json.loads((run_dir / "status.json").read_text())["updated_unix"]

    (xl_start, xl_end), (part_start, part_end) = span("xl", "pretrain"), span("xl-part", "pretrain")
    assert xl_start < part_end and part_start < xl_end  # the two pretrainings overlapped
    for variant in ("xl", "xl-part"):
        assert span(variant, "synthetic_eval")[0] >= span(variant, "pretrain")[1]  # the probe waited for its export


def test_memory_is_asked_in_whole_gb_or_in_mb_rounded_up_never_zero():
    assert [mem_text(gb) for gb in (2, 2.5, 0.3, 0.0001)] == ["2GB", "2560MB", "308MB", "1MB"]
