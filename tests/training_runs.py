"""Training runs started from the tests: the command-line runner and the
synthetic settings the slow end-to-end tests share (see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The tiny model on 1280 synthetic videos (1024 train, 256 val) of 4 classes.
SYNTHETIC = [
    "model.preset=tiny", "data.preset=tiny", "data.synthetic.num_videos=1280", "data.batch_size=32",
    "train.precision=fp32", "train.zero_stage=0", "optim.weight_decay=0.01",
]
# CPP weighs twice each MEP term and the cosine schedule ends at a quarter of the peak
# rate. With weight 1 and a floor of lr / 20, CPP levels off near the 80% the learning
# test asks (80-87% by host; 70% on an AVX-512 EPYC VM, still rising as the rate
# vanished). These settings end at 85-87% over three seeds on that host, with every MEP
# term and the probe gain no lower (tests/test_learning_signal.py).
PRETRAIN = SYNTHETIC + [
    "objective.sampler=current_sequence", "objective.weights.cpp=2", "train.steps=1600", "train.log_every=25",
    "train.checkpoint_every=1600", "optim.lr=0.002", "optim.min_lr=0.0005", "optim.warmup_steps=40",
]


def run_train(stage: str, run_dir: Path, overrides: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """``python -m avbert.train STAGE OVERRIDES train.run_dir=RUN_DIR`` on one CPU process
    (no launcher variables inherited); fails with the run's stderr tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "avbert.train", stage, *overrides, f"train.run_dir={run_dir}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{stage} run in {run_dir} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result
