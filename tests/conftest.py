"""Fixtures shared by the slow end-to-end tests.

``synthetic_pretraining`` is one pretraining run of the tiny model on the
synthetic videos (about six CPU minutes), made once per test session: the
learning-signal tests probe it and the downstream tests fine-tune and
linearly evaluate its fp32 export.

Its negatives come from the clip's own video (``current_sequence``). Every
synthetic video has its own background and hum, so negatives drawn from the
minibatch can be told apart by video rather than by event. The same run with
the paper's default ``cans_similar`` ends with CPP at 52%, and a classifier
fine-tuned from it (as in test_downstream.py) scores 22% on the val split,
below the 33% of the same fine-tuning from random weights (chance is 25%).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from training_runs import PRETRAIN, run_train


@pytest.fixture(scope="session")
def synthetic_pretraining(tmp_path_factory) -> Path:
    """Run directory of the shared pretraining run (config, metrics, export/model.pt)."""
    run_dir = tmp_path_factory.mktemp("synthetic_pretraining")
    run_train("pretrain", run_dir, PRETRAIN)
    return run_dir
