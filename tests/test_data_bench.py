"""tools/bench_data.py runs end to end on tiny media and writes its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).parents[1] / "tools" / "bench_data.py"


@pytest.mark.slow
def test_benchmark_reports_every_run_and_the_machine(tmp_path):
    out = tmp_path / "data.json"
    args = ["--videos", "4", "--size", "48", "--batch-size", "2", "--batches", "1", "--warmup", "1",
            "--repeats", "1", "--threads", "1", "--media-dir", str(tmp_path / "media"), "--out", str(out)]
    done = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pyav loader" in done.stdout
    report = json.loads(out.read_text())
    runs = {"dali raw", "dali +resize", "dali loader", "pyav raw", "pyav +resize", "pyav loader"}
    assert set(report["clips_per_s"]) == set(report["cpu_ms_per_clip"]) == runs
    assert all(entry["median"] > 0 for entry in report["clips_per_s"].values())
    assert {"cpu", "cores", "torch", "dali", "pyav"} <= set(report["machine"])
    assert report["throughput_vs_raw"]["dali raw"] == 1.0
