"""Fixtures shared by the slow end-to-end tests: the two learning runs.

``synthetic_pretraining`` is a pretraining run of the tiny model on the built-in
synthetic videos (world 1); the learning-signal tests probe it and the downstream
tests fine-tune and linearly evaluate its fp32 export. ``scenes_pretraining`` is a
pretraining run on the scenes world written as real media (world 2,
tests/test_learning_scenes.py). Both start in the background at the start of a
session that selected a test needing them, and each goes on, in the background, to what
the selected tests read of it: its held-out figures (``synthetic_figures``,
``scenes_figures``) and the fine-tuning from the world-1 export (``synthetic_finetuning``;
tests/training_runs.py).

World 1's negatives come from the clip's own video (``current_sequence``). The
paper's ``cans_similar`` does not suit this set: background and hum are drawn per
video, so a negative from another video differs from the positive by its video
alone, and MEP learns to tell videos apart instead of events (held-out MEP
0.74-0.78 against 16 negatives, CPP and the probe at chance after 1200 steps,
seeds 0 and 1; docs/learning.md). World 2 draws every nuisance per clip, so no
video identity is there to learn, and the paper's sampler learns event
correspondence there (docs/learning.md, "The paper's sampler on world 2").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import training_runs


def pytest_configure(config):
    """One intra-op thread for the torch work the tests do in this process. The background
    runs and the tests' own training subprocesses (one thread each, tests/training_runs.py)
    keep the cores busy, and a thread pool as wide as the machine then waits at every
    parallel region for a thread the OS has descheduled: a 50-step optimisation of the tiny
    model that takes seconds alone took minutes that way."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def learning_runs(request, tmp_path_factory) -> dict:
    """The learning runs this session's selected tests need, started at once, each with the
    steps after its pretraining that those tests read (tests/training_runs.py)."""
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    runs = {}
    if "synthetic_pretraining" in needed:
        runs["synthetic"] = training_runs.synthetic_pretraining(
            tmp_path_factory.mktemp("synthetic_pretraining"), figures="synthetic_figures" in needed,
            finetune="synthetic_finetuning" in needed)
    if "scenes_pretraining" in needed:
        runs["scenes"] = training_runs.scenes_pretraining(tmp_path_factory.mktemp("scenes_pretraining"),
                                                          figures="scenes_figures" in needed)
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session")
def synthetic_pretraining(learning_runs) -> Path:
    """Run directory of the world-1 pretraining (config, metrics, export/model.pt)."""
    return learning_runs["synthetic"].wait()


@pytest.fixture(scope="session")
def synthetic_figures(synthetic_pretraining) -> dict:
    """The world-1 run's held-out figures (tests/learning.py), as its probe.json has them."""
    return read_figures(synthetic_pretraining)


@pytest.fixture(scope="session")
def synthetic_finetuning(synthetic_pretraining) -> Path:
    """Run directory of the fine-tuning from the world-1 export (``FINETUNE``)."""
    return synthetic_pretraining.parent / "finetune"


@pytest.fixture(scope="session")
def scenes_pretraining(learning_runs) -> Path:
    """Run directory of the world-2 pretraining; its config names the manifest."""
    return learning_runs["scenes"].wait()


@pytest.fixture(scope="session")
def scenes_figures(scenes_pretraining) -> dict:
    """The world-2 run's held-out figures, as its probe.json has them."""
    return read_figures(scenes_pretraining)


def read_figures(run_dir: Path) -> dict:
    return json.loads((run_dir / "probe.json").read_text())


def run_order(item) -> int:
    """0 for most tests; 1 for those that read the world-1 run; 2 for those marked
    ``two_cores`` (they keep both cores busy for minutes); 3 for those that read the
    world-2 run."""
    fixtures = getattr(item, "fixturenames", ())
    if "scenes_pretraining" in fixtures:
        return 3
    if "two_cores" in item.keywords:
        return 2
    return 1 if "synthetic_pretraining" in fixtures else 0


def pytest_collection_modifyitems(config, items):
    """The tests that read a background run go after the others, so the session runs
    those while it trains instead of waiting on it: world 1's tests after the tests that
    need no run, world 2's (the longer run) last. Just before world 2's go the tests marked
    ``two_cores``: early in a session the two background runs hold the cores and such a
    test takes twice as long, late in it one of them is idle. A test that mostly waits (on
    Slurm's time limits, say) takes as long early as late, so it keeps its place. The sort
    is stable: within each group the collection order stays. ``AVBERT_SKIP_SLURM=1`` (set
    by tests/run.sh when it cannot start the local cluster) skips the tests marked
    ``slurm``, saying why, instead of failing them."""
    items.sort(key=run_order)
    if os.environ.get("AVBERT_SKIP_SLURM") != "1":
        return
    skip = pytest.mark.skip(reason="AVBERT_SKIP_SLURM=1: the local Slurm cluster was not started")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
