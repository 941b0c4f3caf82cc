"""Mutated experiment files and command-line overrides end in a plan (exit 0) or a clean
refusal (exit 2, a message naming the file or the command line), never a traceback.

Property-based (``hypothesis``): each shipped experiment file has lines deleted, duplicated
or swapped and characters replaced; overrides are random ``key=value`` texts. The launcher
runs them as ``--dry-run`` in-process, where an uncaught exception fails the test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avbert.launch import launcher
from test_hostile_profiles_manifests import CHARACTERS, mutate_lines

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))
PROFILE = ROOT / "slurm" / "profiles" / "paper-8x8.yaml"
TEXTS = {path.name: path.read_text() for path in SHIPPED}


@st.composite
def mutated(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(TEXTS)))
    lines = mutate_lines(draw, TEXTS[name].splitlines(), ["delete", "duplicate", "swap", "replace"], None, CHARACTERS)
    return name, "\n".join(lines) + "\n"


def dry_run(path: Path, runs: Path, *extra: str) -> int:
    return launcher.main([str(path), "--dry-run", "--runs-dir", str(runs), "--profile", str(PROFILE), *extra])


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated())
def test_a_mutated_experiment_file_is_planned_or_refused_cleanly(case, tmp_path_factory):
    name, text = case
    folder = tmp_path_factory.mktemp("mutated")
    path = folder / name
    path.write_text(text)
    (folder / "manifests").mkdir(exist_ok=True)
    assert dry_run(path, folder / "runs") in (0, 2)
    shutil.rmtree(folder, ignore_errors=True)


KEYS = st.sampled_from(["train.steps", "optim.lr", "model.fusion", "data.clips", "model.sharing.rank",
                        "downstream.feature", "objective.sampler", "train.loggers", "nope", "train", "a.b.c", ""])
VALUES = st.one_of(st.integers(-3, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.text(alphabet=":{}[],-'\"abcxyz ._=0129", max_size=12))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3))
def test_random_overrides_are_applied_or_refused_cleanly(pairs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("overrides")
    overrides = [f"{key}={value}" for key, value in pairs]
    assert launcher.main([str(ROOT / "experiments" / "smoke.yaml"), "--dry-run", "--runs-dir", str(folder / "runs"),
                          *overrides]) in (0, 2)
    shutil.rmtree(folder, ignore_errors=True)
