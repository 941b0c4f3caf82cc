"""Two ranks agree: a NaN on one rank stops both, an exit request on one rank
checkpoints both. Runs the loop under ``torchrun --nproc_per_node 2`` (gloo);
this file is also the per-rank script (``python tests/test_engine_dist.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(run_dir: Path, mode: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """This file as the script of two ranks; ``mode`` is ``nan`` or ``preempt``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve()), str(run_dir), mode]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_nan_on_one_rank_stops_both_ranks_at_the_same_step(tmp_path):
    result = launch(tmp_path, "nan")
    assert result.returncode != 0
    from avbert.train import checkpoint as ckpt
    from avbert.train.metrics import read_status

    errors = [json.loads((tmp_path / f"error_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(e["type"] == "NonFiniteLossError" and "at step 3: cls/loss, loss" in e["message"] for e in errors)
    assert ckpt.latest_complete(tmp_path).step == 2 and not ckpt.step_dir(tmp_path, 3).exists()
    assert read_status(tmp_path)["state"] == "failed"


@pytest.mark.slow
def test_exit_request_on_one_rank_checkpoints_both(tmp_path):
    result = launch(tmp_path, "preempt")
    assert result.returncode == 0, result.stderr[-3000:]
    from avbert.train import checkpoint as ckpt

    outcomes = [json.loads((tmp_path / f"outcome_{rank}.json").read_text()) for rank in (0, 1)]
    assert [(o["status"], o["step"]) for o in outcomes] == [("preempted", 3), ("preempted", 3)]
    info = ckpt.latest_complete(tmp_path)
    assert info.step == 3 and info.world_size == 2
    markers = [ckpt.read_marker(info.path, rank)["loader"] for rank in (0, 1)]
    assert [m["rank"] for m in markers] == [0, 1] and markers[0]["position"] == markers[1]["position"] == 3


def rank_main(run_dir: str, mode: str) -> None:
    """One rank: the point classifier; rank 1 alone turns NaN or asks to exit at its 3rd step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from test_engine_loop import BASE, PointClassifier, Points

    from avbert.config import load_config
    from avbert.data.resumable import ResumableLoader
    from avbert.train.distributed import setup_distributed
    from avbert.train.engine import run_training

    cfg = load_config(None, [*BASE, "train.steps=6", f"train.run_dir={run_dir}"])
    env = setup_distributed("cpu")
    torch.manual_seed(0)
    module = PointClassifier(nan_at=3 if mode == "nan" and env.rank == 1 else None)
    hook = (lambda: module.calls >= 3) if mode == "preempt" and env.rank == 1 else None
    loader = ResumableLoader(Points(), cfg.data.batch_size, env.rank, env.world_size, seed=0)
    try:
        outcome = run_training(cfg, module, loader, env, should_checkpoint_and_exit=hook)
    except Exception as err:
        record = {"type": type(err).__name__, "message": str(err)}
        Path(run_dir, f"error_{env.rank}.json").write_text(json.dumps(record))
        raise
    record = {"status": outcome.status, "step": outcome.step}
    Path(run_dir, f"outcome_{env.rank}.json").write_text(json.dumps(record))
    # A gloo process group left to the interpreter's exit can abort a rank ("terminate called
    # without an active exception") while its peer still tears down its own.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2])
