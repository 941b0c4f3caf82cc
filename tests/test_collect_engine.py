"""``collect`` on runs the real engine wrote: a tiny pretraining and a linear probe per
seed, two seeds, on real media read through a manifest (``tools/make_scenes.py``,
``tools/prepare_data.py generic``), launched with the local executor. The table gives
each variant's mean, standard deviation and number of seeds, and every row its runs'
commit and manifest hash. Then what goes wrong with run directories in practice, a
``metrics.jsonl`` cut mid-line, an ``eval.json`` that never came and an experiment file
edited after the launch, each shows as a flagged row, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from avbert.results.collect import collect
from avbert.rundir import file_sha256

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """\
name: seeds_engine
description: A tiny pretraining and linear probe on real media, two seeds.
default_scale: tiny
seeds: [0, 1]
base:
  model: {{fusion: mid, sharing: {{layers: cross_layer, modalities: lowrank}}}}
  objective: {{sampler: current_sequence}}
grid:
  variants:
    xl-part: {{}}
stages:
  pretrain: {{kind: pretrain}}
  probe:
    kind: linear
    after: pretrain
    config: {{downstream: {{task: synthetic, protocol: linear}}}}
scales:
  tiny:
    config:
      model: {{preset: tiny}}
      data: {{preset: tiny, source: manifest, manifest: {manifest}, num_workers: 0, batch_size: 4}}
      train: {{precision: fp32, device: cpu, log_every: 2, checkpoint_every: 4}}
    stages:
      pretrain:
        config: {{train: {{steps: 4}}}}
        resources: {{nodes: 1, gpus_per_node: 0, time_limit_min: 10, hours: 0.01}}
      probe:
        config: {{train: {{steps: 4}}}}
        resources: {{nodes: 1, gpus_per_node: 0, time_limit_min: 10, hours: 0.01}}
report:
  layout: sharing
  title: "Two seeds, written by the engine"
"""


def run(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, " ".join(command) + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, Path]:
    """(runs folder, experiment file) of the two-seed experiment, run to the end."""
    work = tmp_path_factory.mktemp("seeds_engine")
    media, manifest = work / "media", work / "scenes.jsonl"
    run([sys.executable, "tools/make_scenes.py", str(media), "--num-videos", "16"])
    run([sys.executable, "tools/prepare_data.py", "generic", "--root", str(media), "--out", str(manifest),
         "--workers", "0"])
    experiment = work / "seeds_engine.yaml"
    experiment.write_text(EXPERIMENT.format(manifest=manifest))
    runs = work / "runs"
    run([sys.executable, "tools/launch.py", str(experiment), "--cluster", "local", "--runs-dir", str(runs)])
    return runs, experiment


@pytest.mark.slow
def test_two_seeds_give_mean_std_n_commit_and_manifest_hash(launched):
    runs, _ = launched
    table = collect(["seeds_engine"], runs, None)["seeds_engine"]
    rows = {(row["variant"], row["seed"]): row for row in table.rows}
    assert set(rows) == {("xl-part-seed0", 0), ("xl-part-seed1", 1), ("xl-part", "mean")}
    seeds = [rows[(f"xl-part-seed{s}", s)] for s in (0, 1)]
    mean = rows[("xl-part", "mean")]
    top1 = [json.loads((runs / "seeds_engine" / f"xl-part-seed{s}" / "probe" / "eval.json").read_text())["metrics"]
            ["top1"] for s in (0, 1)]
    assert [row["top1"] for row in seeds] == pytest.approx(top1)
    assert mean["top1"] == pytest.approx(statistics.mean(top1))
    assert mean["top1_std"] == pytest.approx(statistics.stdev(top1))
    assert (mean["seeds"], mean["state"]) == ("2/2", "done")
    index = json.loads((runs / "seeds_engine" / "index.json").read_text())
    commit = next(iter(index["cells"].values()))["git_commit"]
    manifest = next(iter(index["cells"].values()))["config"]["data"]["manifest"]
    for row in seeds:
        assert row["state"] == "done" and row["runs"] == 2  # the pretraining and the probe
        if commit:  # None only outside a git checkout
            assert row["commit"] == commit[:10]
        assert row["manifest_sha256"] == f"scenes.jsonl:{file_sha256(manifest)[:12]}"
        assert row.get("provenance") is None  # one commit, one manifest content: nothing flagged


@pytest.mark.slow
def test_damaged_runs_and_an_edited_experiment_file_are_flagged_rows(launched, tmp_path):
    runs, experiment = launched
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    seed0, seed1 = copy / "seeds_engine" / "xl-part-seed0", copy / "seeds_engine" / "xl-part-seed1"
    metrics = seed0 / "pretrain" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": 1.')  # a writer killed mid-line
    (seed1 / "probe" / "eval.json").unlink()  # the probe trained but never wrote its evaluation
    index = json.loads((copy / "seeds_engine" / "index.json").read_text())
    edited = tmp_path / "seeds_engine.yaml"
    edited.write_text(experiment.read_text().replace("steps: 4}}", "steps: 8}}"))
    index["file"] = str(edited)  # the file the index names, edited after the launch
    (copy / "seeds_engine" / "index.json").write_text(json.dumps(index))

    table = collect(["seeds_engine"], copy, None)["seeds_engine"]
    rows = {(row["variant"], row["seed"]): row for row in table.rows}
    assert "pretrain: 1 unreadable metrics line(s)" in rows[("xl-part-seed0", 0)]["provenance"]
    assert (rows[("xl-part-seed1", 1)]["state"], rows[("xl-part-seed1", 1)]["detail"]) == (
        "failed", "probe: ended without eval.json")
    assert rows[("xl-part-seed0", 0)]["top1"] is not None  # the damaged log does not lose the evaluation
    for row in table.rows:
        assert "experiment file changed since launch" in row["provenance"]
    assert any("changed since it was launched" in note for note in table.notes)
    assert rows[("xl-part", "mean")]["seeds"] == "1/2"  # the failed seed is not averaged in
