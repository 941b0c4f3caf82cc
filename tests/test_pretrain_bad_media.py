"""A pretraining run over a manifest that mixes every kind of bad file with good
ones finishes, and metrics.jsonl counts what was skipped, by reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avbert.data.manifest import load_manifest, write_manifest
from test_data_media import mixed_manifest, prepared_manifest

ROOT = Path(__file__).resolve().parents[1]


def start_refusable(record) -> bool:
    """Records a manifest check refuses at start (missing files): left out of the run's manifest."""
    return any(path and not os.path.exists(path) for path in (record.video, record.audio))


@pytest.mark.slow
def test_pretraining_over_bad_media_finishes_and_counts_skips(tmp_path):
    goods = load_manifest(prepared_manifest(tmp_path / "media", 8)).records
    path, expected = mixed_manifest(tmp_path / "media", goods)
    mixed = load_manifest(path, check=False)
    kept = [r for r in mixed.records if not start_refusable(r)]
    dropped = len(mixed.records) - len(kept)
    assert dropped == 2  # the missing file and the broken link
    kept = kept[: len(kept) // 4 * 4]  # whole batches: one epoch visits every record once (the tail is good)
    manifest = write_manifest(kept, tmp_path / "run.jsonl", mixed.classes)

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    command = [
        sys.executable, "-m", "avbert.train", "pretrain", "model.preset=tiny", "data.preset=tiny",
        "data.source=manifest", f"data.manifest={manifest}", "data.split=train", "data.batch_size=4",
        "data.clip_seconds=1.0", "data.frame_stride=2", "data.short_side=[36, 44]",
        f"train.steps={len(kept) // 4}", "train.log_every=1", "train.precision=fp32", "train.zero_stage=0",
        "objective.sampler=current_minibatch", f"train.run_dir={run_dir}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    reasons = {k: v for k, v in last.items() if k.startswith("data/skipped/") and v}
    assert last["data/skipped"] == expected["skipped"] - dropped, last
    assert sum(reasons.values()) == last["data/skipped"], last
    assert len(reasons) >= 8, reasons  # empty, changed, no video/audio, one frame, too short, vfr, decode...
