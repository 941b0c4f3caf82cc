"""Fixtures shared by the slow end-to-end tests: the background work.

``synthetic_pretraining`` is a pretraining run of the tiny model on the built-in
synthetic videos (world 1); the learning-signal tests probe it and the downstream
tests linearly evaluate its fp32 export. ``synthetic_finetuning`` fine-tunes that
export. ``smoke_experiment`` is the README's first command (tests/test_collect_smoke.py).
``scenes_pretraining`` is a pretraining run on the scenes world written as real
media (world 2, tests/test_learning_scenes.py). The session starts what its selected
tests need at once, in two background queues (tests/training_runs.py): world 1's
pretraining, fine-tuning and the smoke experiment one after the other, the scenes
world beside them. The tests that wait on the last two run at the end of the session,
so that the others never wait on them.

World 1's negatives come from the clip's own video (``current_sequence``). The
paper's default ``cans_similar`` does not suit this set: with 4 event types,
one minibatch candidate in 4 shows the positive's event, and once the tokens
encode events the sampler favours exactly those, so MEP penalises encoding the
event; the tokens instead cluster by video (background and hum are drawn per
video). World 2 draws every nuisance per clip, so no video identity is there
to cluster on.
"""

from __future__ import annotations

import os

from pathlib import Path

import pytest
import training_runs

# The background queues, each run in order; a stage's dependencies run before it when it is needed.
QUEUES = [[training_runs.synthetic_pretraining, training_runs.synthetic_finetuning, training_runs.smoke_experiment],
          [training_runs.scenes_pretraining]]
NEEDS = {"synthetic_finetuning": {"synthetic_pretraining"}}
LATE = ("synthetic_finetuning", "smoke_experiment")  # their tests run last, in this order


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory) -> dict:
    """The background stages this session's selected tests need, started at once: name -> queue."""
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    needed |= {dependency for name in needed for dependency in NEEDS.get(name, ())}
    queues, started = {}, []
    for queue in QUEUES:
        stages, results = [], {}
        for build in queue:
            if build.__name__ in needed:
                stage = build(tmp_path_factory.mktemp(build.__name__), results)
                results[stage.name] = stage.result
                stages.append(stage)
        if stages:
            log = tmp_path_factory.mktemp("background") / f"{stages[0].name}.log"
            started.append(training_runs.BackgroundQueue(log, stages))
            queues.update({stage.name: started[-1] for stage in stages})
    yield queues
    for queue in started:
        queue.stop()


@pytest.fixture(scope="session")
def synthetic_pretraining(background) -> Path:
    """Run directory of the world-1 pretraining (config, metrics, export/model.pt)."""
    return background["synthetic_pretraining"].wait("synthetic_pretraining")


@pytest.fixture(scope="session")
def synthetic_finetuning(background) -> Path:
    """Run directory of the fine-tuning from the world-1 pretraining's export."""
    return background["synthetic_finetuning"].wait("synthetic_finetuning")


@pytest.fixture(scope="session")
def smoke_experiment(background) -> tuple[Path, str]:
    """(runs directory, what the launch printed) of the smoke experiment."""
    queue = background["smoke_experiment"]
    return queue.wait("smoke_experiment"), queue.log.read_text()


@pytest.fixture(scope="session")
def scenes_pretraining(background) -> Path:
    """Run directory of the world-2 pretraining; its config names the manifest."""
    return background["scenes_pretraining"].wait("scenes_pretraining")


def pytest_collection_modifyitems(config, items):
    """The tests that wait on the last background stages (``LATE``) move to the end, in the
    stages' order. ``AVBERT_SKIP_SLURM=1`` (set by tests/run.sh when it cannot start the local
    cluster) skips the tests marked ``slurm``, saying why, instead of failing them."""
    def lateness(item) -> int:
        names = getattr(item, "fixturenames", ())
        return max((LATE.index(name) + 1 for name in LATE if name in names), default=0)

    items.sort(key=lateness)  # stable: the rest keep their order
    if os.environ.get("AVBERT_SKIP_SLURM") != "1":
        return
    skip = pytest.mark.skip(reason="AVBERT_SKIP_SLURM=1: the local Slurm cluster was not started")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
