"""The results tables from fixture run directories (tests/fixtures/runs/).

``fx_sharing`` has a cell in every state: pending (``none``), done (``xl``,
resumed once, two ranks), failed (``xl-all``), preempted with a half-written
metrics line (``xl-part``), a linear probe from scratch (``scratch``, done) and
a run the experiment file no longer produces (``old-variant``); its rows
evaluate the 4-class synthetic set, its file gives the paper's numbers by
variant all the same. ``fx_downstream`` has UCF101 over three splits (two
done, one running), Charades (mAP) and ESC-50 (never submitted).

The expected tables are in tests/fixtures/runs/expected/; after a deliberate
change of the layout, rewrite them with ``AVBERT_UPDATE_GOLDEN=1 pytest
tests/test_collect.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
from pathlib import Path

import pytest

from avbert.results.collect import collect
from avbert.results.render import print_table

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected"
ROOT = Path(__file__).resolve().parents[1]
FILES = ("table.md", "table.csv", "table.json")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    tables = collect(["fx_sharing", "fx_downstream"], RUNS, out)
    return tables, out


def rows_by(table, *keys):
    return {tuple(row[k] for k in keys): row for row in table.rows}


@pytest.mark.parametrize("experiment", ["fx_sharing", "fx_downstream"])
def test_tables_match_the_expected_files(collected, experiment):
    _, out = collected
    for name in FILES:
        produced = (out / experiment / name).read_text(encoding="utf-8")
        expected_path = EXPECTED / experiment / name
        if os.environ.get("AVBERT_UPDATE_GOLDEN"):
            expected_path.parent.mkdir(parents=True, exist_ok=True)
            expected_path.write_text(produced, encoding="utf-8")
        assert produced == expected_path.read_text(encoding="utf-8"), f"{experiment}/{name} differs"


def test_every_cell_has_a_row_with_its_state(collected):
    tables, _ = collected
    sharing = rows_by(tables["fx_sharing"], "variant", "stage")
    assert {key: row["state"] for key, row in sharing.items()} == {
        ("none", "synthetic_eval"): "pending",
        ("xl", "synthetic_eval"): "done",
        ("xl-all", "synthetic_eval"): "failed",
        ("xl-part", "synthetic_eval"): "preempted",
        ("scratch", "synthetic_eval"): "done",
        ("old-variant", "pretrain"): "done",
    }
    assert sharing[("xl-part", "synthetic_eval")]["detail"] == "pretrain 60/100"
    assert sharing[("xl-all", "synthetic_eval")]["detail"].startswith("synthetic_eval: NonFiniteLossError")
    downstream = rows_by(tables["fx_downstream"], "stage", "split")
    assert {key: row["state"] for key, row in downstream.items()} == {
        ("ucf101-finetune-split1", "1"): "done", ("ucf101-finetune-split2", "2"): "done", ("ucf101-finetune-split3", "3"): "running",
        ("ucf101-finetune", "mean"): "partial", ("charades-finetune", "1"): "done", ("esc50-linear", "1"): "missing",
    }


def test_numbers_and_cost_of_a_row(collected):
    tables, _ = collected
    xl = rows_by(tables["fx_sharing"], "variant")[("xl",)]
    assert (xl["top1"], xl["xl"], xl["xt"]) == (62.5, "yes", "no")
    # (1200 s + 900 s of a resumed pretraining) x 2 ranks + 120 s of linear evaluation
    assert xl["hours"] == pytest.approx((2100 * 2 + 120) / 3600)
    assert xl["clips_per_s"] == pytest.approx(115.0)  # median of the pretraining's intervals
    assert xl["peak_mem_gb"] == pytest.approx(3.0)


def test_numbers_next_to_the_paper(collected):
    tables, _ = collected
    downstream = rows_by(tables["fx_downstream"], "stage", "split")
    split1 = downstream[("ucf101-finetune-split1", "1")]
    assert (split1["top1"], split1["paper_top1"]) == (80.0, 85.2)
    assert split1["delta_top1"] == pytest.approx(80.0 - 85.2)
    mean = downstream[("ucf101-finetune", "mean")]
    assert (mean["top1"], mean["paper_top1"], mean["detail"]) == (81.0, 85.2, "2/3 splits")
    assert mean["hours"] == pytest.approx((200 + 360 + 360 + 180) / 3600)  # the pretraining counted once
    charades = downstream[("charades-finetune", "1")]
    assert (charades["map"], charades["paper_map"], charades["top1"]) == (21.25, 29.5, None)


def test_hours_column_names_the_device(collected):
    tables, _ = collected
    assert "GPU-hours" in [c.header for c in tables["fx_sharing"].columns]
    assert "CPU-hours" in [c.header for c in tables["fx_downstream"].columns]


def test_collecting_twice_gives_identical_files(collected, tmp_path):
    _, first = collected
    collect(["fx_sharing", "fx_downstream"], RUNS, tmp_path)
    for experiment in ("fx_sharing", "fx_downstream"):
        names = sorted(p.name for p in (first / experiment).iterdir())
        assert names == sorted(p.name for p in (tmp_path / experiment).iterdir())
        for name in names:
            assert (first / experiment / name).read_bytes() == (tmp_path / experiment / name).read_bytes(), name


def test_figures_are_drawn(collected):
    _, out = collected
    for path in (out / "fx_sharing" / "params_vs_top1.png", out / "fx_sharing" / "curves.png",
                 out / "fx_downstream" / "curves.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "fx_downstream" / "params_vs_top1.png").exists()


def test_csv_has_a_header_and_one_line_per_row(collected):
    tables, out = collected
    lines = (out / "fx_sharing" / "table.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["variant", "stage", "protocol"]
    assert len(lines) == 1 + len(tables["fx_sharing"].rows)
    data = json.loads((out / "fx_sharing" / "table.json").read_text())
    assert [row["variant"] for row in data["rows"]] == ["none", "xl", "xl-all", "xl-part", "scratch", "old-variant"]


def test_terminal_table_shows_ours_beside_the_paper(collected):
    from rich.console import Console

    tables, _ = collected
    console = Console(record=True, width=250)
    print_table(tables["fx_downstream"], console)
    print_table(tables["fx_sharing"], console)
    text = console.export_text()
    assert "80.0 / 85.2 (-5.2)" in text and "preempted: pretrain 60/100" in text


def test_an_experiment_launched_but_not_started_lists_every_cell_as_missing(tmp_path):
    from avbert.launch.index import describe_cells
    from avbert.launch.profile import load_profile
    from avbert.launch.grid import expand
    from avbert.launch.spec import read_experiment
    from avbert.rundir.index import write_index

    exp = read_experiment(ROOT / "experiments" / "smoke.yaml")
    index = {"cells": {}, "launches": []}  # what the launcher records before its jobs start
    describe_cells(index, exp, expand(exp, "tiny", load_profile(ROOT / "slurm/profiles/local.yaml"), tmp_path / "runs"),
                   "tiny")
    write_index(tmp_path / "runs" / "smoke", index)
    tables = collect([str(ROOT / "experiments" / "smoke.yaml")], tmp_path / "runs", None)
    rows = tables["smoke"].rows
    assert [(r["variant"], r["stage"], r["state"], r["detail"]) for r in rows] == [
        ("xl", "synthetic_eval", "missing", "pretrain"), ("xl-part", "synthetic_eval", "missing", "pretrain"),
        ("scratch", "synthetic_eval", "missing", "synthetic_eval")]
    # what the table leaves out or adds is known before anything ran: from the cells' configs
    keys = [column.key for column in tables["smoke"].columns]
    assert "chance_top1" in keys and "top5" not in keys and not [k for k in keys if k.startswith("paper_")]
    assert [r["chance_top1"] for r in rows] == [25.0, 25.0, 25.0]


def test_command_line_writes_the_formats_asked(tmp_path, capsys):
    tool = runpy.run_path(str(ROOT / "tools" / "collect.py"), run_name="collect_test")
    code = tool["main"](["fx_downstream", "--runs-dir", str(RUNS), "--out", str(tmp_path),
                         "--format", "csv"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "fx_downstream").iterdir()) == ["table.csv"]
    assert "Fixture: downstream tasks" in capsys.readouterr().out


def test_command_line_refuses_an_unknown_experiment(tmp_path, capsys):
    tool = runpy.run_path(str(ROOT / "tools" / "collect.py"), run_name="collect_test")
    assert tool["main"](["no_such_experiment", "--runs-dir", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert "no experiment index" in capsys.readouterr().err


def test_a_run_copied_elsewhere_collects_the_same(collected, tmp_path):
    """Run directories hold no absolute paths the tables depend on."""
    _, out = collected
    shutil.copytree(RUNS, tmp_path / "moved")
    collect(["fx_sharing"], tmp_path / "moved", tmp_path / "out", formats=("csv",))
    assert (tmp_path / "out" / "fx_sharing" / "table.csv").read_bytes() == (out / "fx_sharing" / "table.csv").read_bytes()


def test_without_names_every_launched_experiment_is_collected(tmp_path):
    tables = collect(None, RUNS, None)
    assert sorted(tables) == ["fx_downstream", "fx_sharing"]
