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
    args = ["--videos", "4", "--size", "48", "64", "--batch-size", "2", "--batches", "1", "--warmup", "1",
            "--repeats", "1", "--threads", "1", "--media-dir", str(tmp_path / "media"), "--out", str(out)]
    done = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pyav loader" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["sizes"]) == {"48p", "64p"} and "64p sources" in done.stdout
    runs = {"dali raw", "dali +resize", "dali loader", "pyav raw", "pyav +resize", "pyav loader"}
    for figures in report["sizes"].values():
        assert set(figures["clips_per_s"]) == set(figures["cpu_ms_per_clip"]) == runs
        assert all(0 < entry["median"] <= entry["best"] for entry in figures["clips_per_s"].values())
        assert all(0 < entry["best"] <= entry["median"] for entry in figures["cpu_ms_per_clip"].values())
        assert figures["throughput_vs_raw"]["dali raw"] == {"median": 1.0, "rounds": [1.0]}
        loader, raw = (figures["cpu_ms_per_clip"][name]["repeats"][0] for name in ("pyav loader", "pyav raw"))
        assert figures["cpu_efficiency_vs_raw"]["pyav loader"]["rounds"] == [raw / loader]
    assert {"cpu", "cores", "torch", "dali", "pyav"} <= set(report["machine"]) and report["steal_seconds"] >= 0
