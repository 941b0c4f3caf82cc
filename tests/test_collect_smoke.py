"""The smoke experiment, launched on this machine and then collected: one table
row per evaluated cell, each with the pretraining cell it starts from, all done,
with ours beside the paper's numbers and the cost of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avbert.results.collect import collect
from avbert.results.experiments import load_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_experiment_launched_then_collected(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "tools/launch.py", "experiments/smoke.yaml", "--cluster", "local",
               "--runs-dir", str(runs)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Smoke: tiny sharing variants" in result.stdout  # the launcher prints the table at the end

    tables = collect(["smoke"], runs, tmp_path / "reports")
    table = tables["smoke"]
    assert [(row["variant"], row["stage"], row["protocol"]) for row in table.rows] == [
        ("xl", "synthetic_eval", "linear"), ("xl-part", "synthetic_eval", "linear")]

    index = json.loads((runs / "smoke" / "index.json").read_text())
    spec = load_report("smoke", runs, (ROOT / "experiments",))
    covered = sorted(f"smoke/{c.variant}/{c.stage}" for row in spec.rows() for c in row.chain)
    assert covered == sorted(index["cells"])  # every launched cell is in exactly one row

    reference = {"xl": (65.7, 89.9, 21.0), "xl-part": (67.5, 92.3, 4.0)}
    for row in table.rows:
        assert (row["state"], row["detail"]) == ("done", "")
        assert 0.0 <= row["top1"] <= row["top5"] <= 100.0
        assert (row["paper_top1"], row["paper_top5"], row["paper_params_m"]) == reference[row["variant"]]
        assert row["delta_top1"] == pytest.approx(row["top1"] - row["paper_top1"])
        assert row["hours"] > 0 and row["clips_per_s"] > 0 and row["peak_mem_gb"] > 0 and row["params_m"] > 0
    assert "CPU-hours" in [column.header for column in table.columns]
    written = sorted(p.name for p in (tmp_path / "reports" / "smoke").iterdir())
    assert written == ["curves.png", "params_vs_top1.png", "table.csv", "table.json", "table.md"]
