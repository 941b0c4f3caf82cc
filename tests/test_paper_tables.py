"""Every table of the paper is a shipped experiment, and each of its tables shows the paper's
numbers where the paper reports the cell, and nowhere else.

Each shipped experiment's cells at the paper scale are written as finished runs (config,
status, evaluation, by the run directory's writers) and collected: each ``report.reference``
entry must land in at least one row, every row it names must show the paper's number in the
paper column, and a row no entry names (another protocol, a set or pretraining the paper
does not report) shows none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avbert.config import ConfigError
from avbert.launch.spec import read_experiment
from avbert.results.columns import FEATURE_LABELS, METRICS
from avbert.results.experiments import DOWNSTREAM_KINDS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))
CLASSES = {"ucf101": 101, "esc50": 50, "kinetics_sounds": 32, "charades": 157, "synthetic": 4}


def evaluation(config: dict) -> dict:
    task = config["downstream"]["task"]
    metrics = {"map": 20.0} if task == "charades" else {"top1": 50.0, "top5": 80.0}
    return {"task": task, "feature": config["downstream"].get("feature"), "metrics": metrics,
            "num_classes": CLASSES[task], "multilabel": task == "charades"}


def paper_scale_table(path: Path, runs_dir: Path):
    """(the experiment, its table at the paper scale, where it has one): every cell's run written to ``runs_dir``
    with the run directory's own writers (config, status, evaluation) and the launcher's index, then ``collect``ed."""
    from avbert.config import dump_yaml, to_dict
    from avbert.launch.index import describe_cells
    from avbert.launch.profile import load_profile
    from avbert.launch.grid import expand
    from avbert.results.collect import collect_one
    from avbert.rundir import write_json
    from avbert.rundir.index import write_index

    exp = read_experiment(path)
    scale = "paper" if "paper" in exp.spec.scales else exp.spec.default_scale  # the smoke is tiny only
    profile = load_profile(ROOT / "slurm" / "profiles" / ("paper-8x8.yaml" if scale == "paper" else "local.yaml"))
    cells = expand(exp, scale, profile, runs_dir, check_files=False)
    index = {"cells": {}, "launches": []}
    describe_cells(index, exp, cells, scale)  # the launcher's record, as a launch writes it
    write_index(runs_dir / exp.name, index)
    for cell in cells:
        cell.run_dir.mkdir(parents=True)
        dump_yaml(cell.config, cell.run_dir / "config.yaml")
        write_json(cell.run_dir / "status.json", {"state": "completed", "step": 1, "total_steps": 1})
        if cell.kind in DOWNSTREAM_KINDS:
            write_json(cell.run_dir / "eval.json", evaluation(to_dict(cell.config)))
    table, _, _ = collect_one(str(path), runs_dir)
    return exp, table


def named_rows(layout: str, key: str, rows: list[dict]) -> list[tuple[dict, str]]:
    """(row, the prefix of its paper columns) of every row the reference ``key`` names."""
    if layout == "components":
        stage = key.split("/")[-1]
        task, feature = stage.split("-finetune-") if "-finetune-" in stage else stage.split("-linear-")
        return [(row, f"{task}_") for row in rows if row["component"] == FEATURE_LABELS[feature]]
    if layout == "downstream":
        variant, stage = key.split("/") if "/" in key else (None, key)
        return [(row, "") for row in rows if (variant is None or row["variant"] == variant)
                and (row["stage"] == stage or row["stage"].startswith(stage + "-"))]
    return [(row, "") for row in rows if row["variant"] == key]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_reference_lands_in_its_rows_and_only_there(path, tmp_path):
    exp, table = paper_scale_table(path, tmp_path / "runs")
    layout, shown = exp.spec.report.layout, set()
    for key, reference in exp.spec.report.reference.items():
        numbers = {name: value for name, value in vars(reference).items() if name in METRICS and value is not None}
        rows = named_rows(layout, key, table.rows)
        assert rows or not numbers, f"{path.name}: report.reference.{key} lands in no row"
        for row, prefix in rows:
            for name, value in numbers.items():
                assert row[f"paper_{prefix}{name}"] == value, (key, name, row)
                shown.add((id(row), f"paper_{prefix}{name}"))
    for row in table.rows:  # a paper cell no reference names stays empty
        for column in (c.key for c in table.columns if c.key.startswith("paper_") and c.key != "paper_params_m"):
            assert row[column] is None or (id(row), column) in shown, (path.name, column, row)


def test_every_table_of_the_paper_is_an_experiment():
    layouts = {read_experiment(path).spec.report.layout: path.stem for path in SHIPPED}
    assert set(layouts) >= {"sharing", "negative_sampling", "fusion", "downstream", "components"}


def test_the_downstream_tables_give_the_pretraining_data_axis(tmp_path):
    exp, table = paper_scale_table(ROOT / "experiments" / "downstream.yaml", tmp_path / "runs")
    paper = {(row["variant"], row["stage"]): row["paper_top1"] for row in table.rows if row["split"] == "mean"}
    assert paper[("k700", "ucf101-finetune")] == 85.2 and paper[("audioset", "ucf101-finetune")] == 86.1
    assert paper[("audioset", "esc50-linear")] == 81.5
    assert paper[("k700", "esc50-linear")] is None  # the paper reports ESC-50 after AudioSet only
    assert paper[("k700", "ucf101-linear")] is None  # the paper's UCF101 number is fine-tuned


def test_table_c_is_laid_out_like_the_papers(tmp_path):
    _, table = paper_scale_table(ROOT / "experiments" / "components.yaml", tmp_path / "runs")
    assert [row["component"] for row in table.rows] == ["V-CNN", "A-CNN", "M-CNN", "V-BERT", "A-BERT", "M-BERT"]
    headers = [column.header for column in table.columns]
    assert headers.index("Charades mAP") < headers.index("Kinetics-Sounds top-1") < headers.index(
        "Kinetics-Sounds top-5")
    m_bert = table.rows[-1]
    assert (m_bert["paper_charades_map"], m_bert["paper_kinetics_sounds_top1"],
            m_bert["paper_kinetics_sounds_top5"]) == (29.5, 75.6, 94.6)
    assert m_bert["delta_kinetics_sounds_top1"] == pytest.approx(50.0 - 75.6)


def test_a_reference_that_matches_no_row_is_refused(tmp_path):
    text = (ROOT / "experiments" / "downstream.yaml").read_text()
    for key in ("ucf101:", "k700/ucf101:", "k700/kinetics_sounds-finetune:"):  # by task, and a stage it lacks
        path = tmp_path / "bad.yaml"
        path.write_text(text.replace("    k700/ucf101-finetune:", f"    {key}", 1))
        with pytest.raises(ConfigError, match=r"report\.reference\..*matches no row"):
            read_experiment(path)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_experiment_dry_runs_before_its_data_exists(path, tmp_path, monkeypatch, capsys):
    """``--dry-run`` plans a paper experiment where no manifest has been written yet, naming the
    missing ones (a real launch refuses them)."""
    from avbert.launch import launcher

    monkeypatch.chdir(tmp_path)
    exp = read_experiment(path)
    profile = "local.yaml" if exp.spec.default_scale == "tiny" else "paper-8x8.yaml"
    argv = [str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--profile",
            str(ROOT / "slurm" / "profiles" / profile)]
    assert launcher.main(argv) == 0
    out = capsys.readouterr().out
    assert "plan (dry run)" in out
    if exp.spec.default_scale == "paper":
        assert "manifest not found" in out
