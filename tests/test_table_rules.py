"""What a results table shows beside our numbers, and when: the paper's numbers only on rows of a
task the paper reports, chance beside top-1, top-5 only when the set has more than 5 classes, and
the from-scratch row with no pretraining in its chain.

Small tables are built in memory from cells and runs (no files); the fixture runs of
tests/test_collect.py (``fx_sharing``: the 4-class synthetic set with a scratch row and the
paper's numbers given by variant; ``fx_downstream``: UCF101, Charades, ESC-50) check the same
rules through ``collect``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avbert.results.collect import collect
from avbert.results.experiments import CellSpec, ExperimentReport, load_report
from avbert.results.render import print_table
from avbert.results.runs import StageRun
from avbert.results.tables import CHANCE_NOTE, PAPER_NOTE, build_table

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
RUNS = FIXTURES / "runs"
REFERENCE = {"top1": 65.7, "top5": 89.9, "map": None, "params_m": 21.0}


def probe_cell(variant: str, task: str, classes: int, kind: str = "linear") -> CellSpec:
    config = {"downstream": {"task": task, "num_classes": 0},
              "data": {"source": "synthetic", "synthetic": {"num_classes": classes}}}
    return CellSpec(variant, "probe", "probe", kind, None, config)


def table_of(cells: list[CellSpec], evals: dict | None = None, layout: str = "sharing"):
    """The table of ``cells`` (each variant with the paper's numbers), runs holding only ``evals`` by variant."""
    spec = ExperimentReport("rules", layout, "rules", "tiny", cells, {c.variant: dict(REFERENCE) for c in cells})
    runs = {(c.variant, c.stage): StageRun(c.stage, Path("/no/such/run"), eval=(evals or {}).get(c.variant))
            for c in cells}
    return build_table(spec, runs, lambda model: None, lambda path: "scratch" if not path else path)


def keys_of(table) -> list[str]:
    return [column.key for column in table.columns]


@pytest.fixture(scope="module")
def tables():
    return collect(["fx_sharing", "fx_downstream"], RUNS, None)


# -- the paper's numbers ---------------------------------------------------------------------------------------
def test_a_synthetic_row_never_gets_the_papers_numbers():
    table = table_of([probe_cell("xl", "synthetic", 4)], {"xl": {"task": "synthetic", "metrics": {"top1": 40.0}}})
    assert not [key for key in keys_of(table) if key.startswith(("paper_", "delta_"))]
    assert PAPER_NOTE not in table.notes


def test_a_paper_task_row_gets_them_and_a_synthetic_row_beside_it_does_not():
    cells = [probe_cell("xl", "kinetics_sounds", 32, "finetune"), probe_cell("xl-part", "synthetic", 4)]
    table = table_of(cells, {"xl": {"task": "kinetics_sounds", "metrics": {"top1": 60.0}},
                             "xl-part": {"task": "synthetic", "metrics": {"top1": 40.0}}})
    kinetics, synthetic = table.rows
    assert (kinetics["paper_top1"], kinetics["delta_top1"], kinetics["paper_params_m"]) == (65.7, pytest.approx(-5.7),
                                                                                            21.0)
    paper = [key for key in keys_of(table) if key.startswith(("paper_", "delta_"))]
    assert "paper_top1" in paper and all(synthetic[key] is None for key in paper)
    assert PAPER_NOTE in table.notes


def test_a_row_of_another_protocol_than_the_papers_does_not_get_them():
    cells = [probe_cell("xl", "kinetics_sounds", 32, "linear")]  # the paper fine-tunes on Kinetics-Sounds
    table = table_of(cells, {"xl": {"task": "kinetics_sounds", "metrics": {"top1": 50.0}}})
    assert not [key for key in keys_of(table) if key.startswith(("paper_", "delta_"))]


def test_the_fixture_synthetic_rows_leave_out_the_references_their_file_gives(tables):
    spec = load_report("fx_sharing", RUNS)
    assert spec.reference["xl"]["top1"] == 65.7  # given in the file, by variant
    assert not [key for key in keys_of(tables["fx_sharing"]) if key.startswith(("paper_", "delta_"))]
    assert "paper_top1" in keys_of(tables["fx_downstream"])


# -- top-5 -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes, shown", [(4, False), (5, False), (6, True), (8, True)])
def test_top5_is_shown_only_above_5_classes_of_the_configured_set(classes, shown):
    table = table_of([probe_cell("xl", "synthetic", classes)])
    assert ("top5" in keys_of(table)) is shown


def test_the_class_count_an_evaluation_recorded_wins_over_the_config():
    evaluation = {"task": "synthetic", "num_classes": 10, "metrics": {"top1": 30.0, "top5": 70.0}}
    table = table_of([probe_cell("xl", "synthetic", 4)], {"xl": evaluation})
    assert "top5" in keys_of(table) and table.rows[0]["top5"] == 70.0
    assert table.rows[0]["chance_top1"] == pytest.approx(10.0)


def test_top5_of_the_fixture_tables(tables):
    assert "top5" not in keys_of(tables["fx_sharing"])  # 4 classes
    assert "top5" in keys_of(tables["fx_downstream"])  # UCF101's 101


# -- chance ----------------------------------------------------------------------------------------------------
def test_chance_is_one_over_the_classes_beside_top1():
    table = table_of([probe_cell("xl", "synthetic", 8)])
    keys = keys_of(table)
    assert keys.index("chance_top1") == keys.index("top1") + 1
    assert table.rows[0]["chance_top1"] == pytest.approx(12.5)
    assert CHANCE_NOTE in table.notes


def test_chance_in_the_fixture_tables(tables):
    from rich.console import Console

    sharing = {row["variant"]: row["chance_top1"] for row in tables["fx_sharing"].rows}
    assert sharing == {"none": 25.0, "xl": 25.0, "xl-all": 25.0, "xl-part": 25.0, "scratch": 25.0,
                       "old-variant": None}  # a pretraining alone evaluates nothing
    downstream = {(row["stage"], row["split"]): row["chance_top1"] for row in tables["fx_downstream"].rows}
    assert downstream[("ucf101-finetune-split1", "1")] == downstream[("ucf101-finetune", "mean")] == pytest.approx(100 / 101)
    assert downstream[("charades-finetune", "1")] is None  # multi-label: reported by mAP
    console = Console(record=True, width=250)
    print_table(tables["fx_sharing"], console)
    assert "chance top-1" in console.export_text()


# -- the row from scratch --------------------------------------------------------------------------------------
def test_the_scratch_row_has_no_pretraining_in_its_chain(tables):
    spec = load_report("fx_sharing", RUNS)
    chains = {row.variant: [(c.stage, c.kind, c.after) for c in row.chain] for row in spec.rows()}
    assert chains["scratch"] == [("synthetic_eval", "linear", None)]
    assert chains["xl"] == [("pretrain", "pretrain", None), ("synthetic_eval", "linear", "pretrain")]
    scratch = next(row for row in spec.rows() if row.variant == "scratch").chain[0]
    assert scratch.config["downstream"]["pretrained"] is None
    row = {r["variant"]: r for r in tables["fx_sharing"].rows}["scratch"]
    assert (row["stage"], row["state"], row["top1"]) == ("synthetic_eval", "done", 29.5)
    assert row["hours"] == pytest.approx(100 / 3600)  # its own probe only: no pretraining counted


# -- provenance -----------------------------------------------------------------------------------------------------
def test_each_row_says_its_runs_commits_and_manifests_and_flags_disagreement(tmp_path):
    from avbert.results.runs import provenance

    def run(commit, digest, manifest="/data/m/ucf101.jsonl"):
        config = {"git_commit": commit, "data": {"source": "manifest", "manifest": manifest}}
        return StageRun("s", tmp_path, config=config, status={"state": "completed", "manifest_sha256": digest})

    agreed = provenance([run("a" * 40, "f" * 64), run("a" * 40, "f" * 64)])
    assert (agreed["runs"], agreed["commit"], agreed["provenance"]) == (2, "a" * 10, None)
    assert agreed["manifest_sha256"] == "ucf101.jsonl:" + "f" * 12
    mixed = provenance([run("a" * 40, "f" * 64), run("b" * 40, "e" * 64)])
    assert mixed["commit"] == "a" * 10 + "+" + "b" * 10
    assert mixed["provenance"] == "runs disagree on commit (2 commits); ucf101.jsonl read with 2 different contents"
    assert provenance([run("a" * 40, "f" * 64), run("a" * 40, "e" * 64, "/data/m/k700.jsonl")])["provenance"] is None
