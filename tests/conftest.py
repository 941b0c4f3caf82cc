"""Fixtures shared by the slow end-to-end tests.

``synthetic_pretraining`` is one pretraining run of the tiny model on the
synthetic videos (about five CPU minutes), made once per test session: the
learning-signal tests probe it and the downstream tests fine-tune and
linearly evaluate its fp32 export.

Its negatives come from the clip's own video (``current_sequence``). With
minibatch negatives (``cans_similar``, the paper's default) MEP is solved by
recognising the video, since each synthetic video has its own background and
hum; the visual tokens then never learn the events. A classifier fine-tuned
for 1000 steps on 512 videos from a 500-step ``cans_similar`` run memorised
them (99% on its training batches) and scored 23% on held-out videos, as the
same fine-tuning from random weights did (chance is 25%).
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
