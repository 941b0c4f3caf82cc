"""``python -m avbert.train``: argument handling, config errors, and a whole
single-process pretraining run of the tiny model with its fp32 export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avbert.config import load_config
from avbert.train.__main__ import build_parser, main
from avbert.train.metrics import read_metrics, read_status

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.preset=tiny", "data.preset=tiny", "data.synthetic.num_videos=40", "data.batch_size=4",
        "train.steps=2", "train.log_every=1", "train.checkpoint_every=1", "train.precision=bf16"]


def test_stages_are_subcommands_sharing_config_and_overrides():
    args = build_parser().parse_args(["pretrain", "--config", "x.yaml", "train.steps=5", "optim.lr=0.1"])
    assert (args.stage, args.config, args.overrides) == ("pretrain", "x.yaml", ["train.steps=5", "optim.lr=0.1"])
    for stage in ("finetune", "linear"):
        assert build_parser().parse_args([stage, "train.steps=1"]).stage == stage
    with pytest.raises(SystemExit):
        build_parser().parse_args(["unknown-stage"])


def test_missing_config_file_exits_2_with_its_name(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "absent.yaml" in err and "file not found" in err


def test_unknown_override_exits_2_with_a_suggestion(capsys):
    assert main(["pretrain", "train.stpes=3"]) == 2
    assert "train.stpes" in capsys.readouterr().err


@pytest.mark.slow
def test_unreadable_manifest_exits_2_naming_the_file_and_line(tmp_path, capsys):
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text('{"path": 3}\n')
    argv = ["pretrain", "model.preset=tiny", "data.preset=tiny", "data.source=manifest", f"data.manifest={manifest}",
            "train.device=cpu", "train.precision=fp32", f"train.run_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"manifest error: {manifest}:1:") and "Traceback" not in err


def test_single_process_pretraining_run_and_export(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "avbert.train", "pretrain", *TINY, f"train.run_dir={tmp_path}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "completed at step 2/2" in result.stderr
    assert load_config(tmp_path / "config.yaml") == load_config(None, [*TINY, f"train.run_dir={tmp_path}"])
    record = read_metrics(tmp_path)[-1]
    assert {"mep_visual/loss", "mep_audio/loss", "mep_multimodal/loss", "cpp/loss", "cpp/acc"} <= set(record)
    assert read_status(tmp_path)["state"] == "completed"

    from avbert.train.pretrain import load_exported_model

    model = load_exported_model(tmp_path / "export" / "model.pt")
    assert model.cfg == load_config(None, TINY).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    video = torch.randn(2, 4, 3, 4, 32, 32)
    audio = torch.randn(2, 4, 1, 40, 32)
    assert model.eval()(video, audio).summary().shape == (2, 2 * model.width)
