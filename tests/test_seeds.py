"""An experiment run over several seeds (``seeds: [...]``): one cell per seed and variant, and a
table row per variant with the mean, the standard deviation and how many seeds are in."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from avbert.config import ConfigError
from avbert.launch.profile import load_profile
from avbert.launch.grid import expand
from avbert.launch.spec import read_experiment
from avbert.launch.index import describe_cells
from avbert.results.experiments import load_report
from avbert.results.runs import StageRun
from avbert.results.tables import build_table
from avbert.rundir.index import write_index

ROOT = Path(__file__).resolve().parents[1]


def seeded_smoke(tmp_path: Path, seeds: str = "[0, 1, 2]") -> Path:
    text = (ROOT / "experiments" / "smoke.yaml").read_text().replace("default_scale: tiny",
                                                                     f"default_scale: tiny\nseeds: {seeds}")
    path = tmp_path / "seeded.yaml"
    path.write_text(text.replace("name: smoke", "name: seeded"))
    return path


def test_each_seed_is_a_cell_of_its_own_with_its_seeds_and_its_own_chain(tmp_path):
    cells = expand(read_experiment(seeded_smoke(tmp_path)), "tiny", load_profile(ROOT / "slurm/profiles/local.yaml"),
                   tmp_path / "runs")
    xl_part = [c for c in cells if c.base_variant == "xl-part"]
    assert [(c.variant, c.stage) for c in xl_part] == [
        (f"xl-part-seed{s}", stage) for s in (0, 1, 2) for stage in ("pretrain", "synthetic_eval")]
    for cell in xl_part:
        assert cell.config.train.seed == cell.config.objective.seed == cell.seed
    probe = next(c for c in xl_part if c.seed == 2 and c.kind == "linear")
    assert probe.config.downstream.pretrained.endswith("seeded/xl-part-seed2/pretrain/export/model.pt")
    assert {c.variant for c in cells if c.base_variant == "scratch"} == {"scratch-seed0", "scratch-seed1",
                                                                          "scratch-seed2"}


def test_repeated_seeds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="seeds repeat"):
        read_experiment(seeded_smoke(tmp_path, "[0, 1, 1]"))


def test_the_table_gives_mean_std_and_n_and_flags_missing_seeds(tmp_path):
    exp = read_experiment(seeded_smoke(tmp_path))
    index = {"cells": {}, "launches": []}
    describe_cells(index, exp, expand(exp, "tiny", load_profile(ROOT / "slurm/profiles/local.yaml"),
                                      tmp_path / "runs"), "tiny")
    write_index(tmp_path / "runs" / exp.name, index)
    spec = load_report(exp.name, tmp_path / "runs")  # the cells and seeds as the launcher recorded them
    assert spec.seeds == [0, 1, 2]
    cells = spec.cells
    top1 = {("xl", 0): 40.0, ("xl", 1): 44.0, ("xl", 2): 45.0, ("xl-part", 0): 30.0, ("xl-part", 1): 34.0}
    runs = {}
    for c in cells:
        done = c.kind == "pretrain" or (c.row_variant, c.seed) in top1 or c.row_variant == "scratch"
        status = {"state": "completed", "step": 1, "total_steps": 1} if done else None
        evaluation = ({"task": "synthetic", "num_classes": 4,
                       "metrics": {"top1": top1.get((c.row_variant, c.seed), 25.0)}} if done and c.kind == "linear"
                      else None)
        runs[(c.variant, c.stage)] = StageRun(c.stage, Path("/no/such/run"), status=status, eval=evaluation)
    table = build_table(spec, runs, lambda model: None, lambda weights: weights)
    means = {row["variant"]: row for row in table.rows if row["seed"] == "mean"}
    xl, part = means["xl"], means["xl-part"]
    assert xl["top1"] == pytest.approx(43.0) and xl["top1_std"] == pytest.approx(statistics.stdev([40, 44, 45]))
    assert (xl["seeds"], xl["state"]) == ("3/3", "done")
    assert (part["seeds"], part["state"], part["detail"]) == ("2/3", "partial", "2 of 3 seeds done")
    assert part["top1"] == pytest.approx(32.0)
    headers = [column.header for column in table.columns]
    assert headers[:3] == ["variant", "seed", "seeds done"] and "± top-1" in headers


def test_only_selects_every_seed_of_a_variant(tmp_path):
    from avbert.launch.grid import select

    cells = expand(read_experiment(seeded_smoke(tmp_path)), "tiny", load_profile(ROOT / "slurm/profiles/local.yaml"),
                   tmp_path / "runs")
    assert len(select(cells, ["xl-part"], "cli")) == 6 and len(select(cells, ["xl-part-seed1"], "cli")) == 2
