"""The experiment registry: the shipped experiments, deterministic expansion, and refused files."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from avbert.config import ConfigError
from avbert.launch import launcher
from avbert.launch.profile import load_profile
from avbert.launch.grid import expand, select
from avbert.launch.spec import read_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
PROFILES = REPO / "slurm" / "profiles"
BAD = REPO / "tests" / "fixtures" / "bad_experiments"
ABLATIONS = ("sharing_ablation", "fusion_ablation", "negative_sampling")
MANIFESTS = ("kinetics700", "audioset", "kinetics_sounds", "ucf101", "esc50", "charades")


@pytest.fixture
def manifests(tmp_path, monkeypatch):
    """A launch directory where the paper-scale manifests exist (empty files)."""
    (tmp_path / "manifests").mkdir()
    for name in MANIFESTS:
        (tmp_path / "manifests" / f"{name}.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cells_of(name: str, scale: str, runs_dir: Path = Path("/RUNS"), **kwargs):
    profile = load_profile(PROFILES / ("paper-8x8.yaml" if scale == "paper" else "local.yaml"))
    return expand(read_experiment(EXPERIMENTS / f"{name}.yaml"), scale, profile, runs_dir, **kwargs)


@pytest.mark.parametrize("name", [p.stem for p in sorted(EXPERIMENTS.glob("*.yaml"))])
def test_every_shipped_experiment_expands_at_every_scale(name, manifests):
    experiment = read_experiment(EXPERIMENTS / f"{name}.yaml")
    assert experiment.name == name
    for scale in experiment.spec.scales:
        cells = cells_of(name, scale, manifests / "runs")
        assert cells, (name, scale)
        for cell in cells:
            assert cell.name == f"{name}/{cell.variant}/{cell.stage}"
            assert cell.job_name == f"{name}:{cell.variant}:{cell.stage}"
            assert cell.run_dir == manifests / "runs" / name / cell.variant / cell.stage
            assert cell.config.train.run_dir == str(cell.run_dir)
            assert cell.config.name == cell.name and cell.config.stage == cell.kind


def test_sharing_ablation_cells_name_the_ablation():
    cells = cells_of("sharing_ablation", "tiny")
    assert [c.name for c in cells] == [
        f"sharing_ablation/{v}/{s}" for v in ("none", "xl", "xl-all", "xl-part") for s in ("pretrain", "synthetic_eval")]
    sharing = {c.variant: (c.config.model.sharing.layers, c.config.model.sharing.modalities) for c in cells}
    assert sharing == {"none": ("none", "none"), "xl": ("cross_layer", "none"), "xl-all": ("cross_layer", "all"),
                       "xl-part": ("cross_layer", "lowrank")}


def test_ablation_grids_are_the_papers():
    samplers = {c.variant: c.config.objective.sampler for c in cells_of("negative_sampling", "tiny")}
    assert samplers == {s: s for s in ("current_sequence", "current_minibatch", "cans_similar", "cans_dissimilar")}
    fusions = {c.variant: c.config.model.fusion for c in cells_of("fusion_ablation", "tiny")}
    assert fusions == {"early": "early", "mid": "mid", "late": "late"}


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablations_evaluate_on_kinetics_sounds_at_paper_scale_and_synthetic_at_tiny(name, manifests):
    paper = cells_of(name, "paper", manifests / "runs")
    tiny = cells_of(name, "tiny", manifests / "runs")
    assert {c.variant for c in paper} == {c.variant for c in tiny}  # same grid at both scales
    ks = [c for c in paper if c.kind != "pretrain"]
    assert ks and all(c.config.downstream.task == "kinetics_sounds" for c in ks)
    assert all(c.config.data.manifest == str(manifests / "manifests" / "kinetics_sounds.jsonl") for c in ks)
    pre = [c for c in paper if c.kind == "pretrain"]
    assert all(c.config.data.manifest == str(manifests / "manifests" / "kinetics700.jsonl") for c in pre)
    assert all(c.config.model.preset == "paper" and c.resources.gpus == 64 for c in pre)
    evals = [c for c in tiny if c.kind != "pretrain"]
    assert evals and all(c.config.downstream.task == "synthetic" and c.config.data.source == "synthetic"
                         for c in evals)
    assert all(c.config.model.preset == "tiny" for c in tiny)


def test_downstream_stages_start_from_their_pretraining_export():
    for cell in cells_of("smoke", "tiny", Path("/RUNS")):
        if cell.kind == "pretrain" or cell.variant == "scratch":
            assert cell.config.downstream.pretrained is None and cell.upstream is None
        else:
            assert cell.upstream == f"smoke/{cell.variant}/pretrain"
            assert cell.config.downstream.pretrained == f"/RUNS/smoke/{cell.variant}/pretrain/export/model.pt"


def test_a_from_scratch_variant_runs_the_downstream_stages_alone_with_their_settings():
    cells = {c.name: c for c in cells_of("smoke", "tiny", Path("/RUNS"))}
    assert list(cells) == ["smoke/xl/pretrain", "smoke/xl/synthetic_eval", "smoke/xl-part/pretrain",
                           "smoke/xl-part/synthetic_eval", "smoke/scratch/synthetic_eval"]
    scratch, probe = cells["smoke/scratch/synthetic_eval"], cells["smoke/xl-part/synthetic_eval"]
    assert (scratch.kind, scratch.after, scratch.upstream, scratch.config.downstream.pretrained) == (
        "linear", None, None, None)
    assert scratch.resources == probe.resources and scratch.stage_key == "synthetic_eval"
    # the same probe: only the name, the run directory and the weights differ
    cfg = probe.config
    assert replace(scratch.config, name=cfg.name, train=replace(scratch.config.train, run_dir=cfg.train.run_dir),
                   downstream=replace(scratch.config.downstream, pretrained=cfg.downstream.pretrained)) == cfg


def test_downstream_experiment_covers_splits_folds_and_both_protocols(manifests):
    cells = cells_of("downstream", "paper", manifests / "runs")
    pretrainings = [c for c in cells if c.kind == "pretrain"]
    assert {c.variant: Path(c.config.data.manifest).name for c in pretrainings} == {
        "k700": "kinetics700.jsonl", "audioset": "audioset.jsonl"}  # the pretraining-data axis
    by_task: dict = {}
    for cell in cells:
        if cell.kind != "pretrain":
            by_task.setdefault((cell.variant, cell.config.downstream.task), set()).add(
                (cell.kind, cell.config.downstream.split, cell.config.downstream.feature))
            assert Path(cell.config.data.manifest).name == f"{cell.config.downstream.task}.jsonl"
    for variant in ("k700", "audioset"):
        assert by_task[(variant, "ucf101")] == {(p, s, "v_cnn") for p in ("finetune", "linear") for s in "123"}
        assert by_task[(variant, "esc50")] == {(p, s, "a_cnn") for p in ("finetune", "linear") for s in "12345"}
    assert all(cell.config.downstream.protocol == cell.kind for cell in cells if cell.kind != "pretrain")
    assert "downstream/k700/ucf101-finetune-split2" in [c.name for c in cells]


def test_downstream_recipes_are_the_released_configs(manifests):
    cells = {c.stage: c.config for c in cells_of("downstream", "paper", manifests / "runs") if c.variant == "k700"}
    ucf, esc = cells["ucf101-finetune-split1"], cells["esc50-linear-fold1"]
    assert (ucf.optim.optimizer, ucf.optim.head_lr, ucf.optim.lr, ucf.optim.weight_decay) == ("adam", 0.03, 1e-4, 5e-6)
    assert (ucf.data.clips, ucf.data.test_views, ucf.data.test_crops, ucf.optim.schedule) == (1, 10, 3, "cosine")
    assert (ucf.data.crop_size, ucf.data.test_crop_size) == (112, 128)
    assert (esc.optim.head_lr, esc.optim.schedule, esc.downstream.loss, esc.downstream.margin) == (
        0.003, "linear", "multi_margin", 0.1)
    parts = {c.stage: c.config for c in cells_of("components", "paper", manifests / "runs")}
    ks = parts["kinetics_sounds-finetune-m_bert"]
    assert (ks.optim.optimizer, ks.optim.head_lr, ks.optim.lr, ks.downstream.feature) == ("adam", 1e-3, 1e-4, "m_bert")
    assert (ks.data.test_crop_size, ks.data.clip_seconds) == (128, 0.8)
    assert {c.downstream.feature for s, c in parts.items() if s.startswith("charades")} == {
        "v_cnn", "a_cnn", "m_cnn", "v_bert", "a_bert", "m_bert"}


def test_expansion_is_deterministic_and_records_the_commit(manifests):
    first = cells_of("negative_sampling", "paper", manifests / "runs", git_commit="abc123")
    second = cells_of("negative_sampling", "paper", manifests / "runs", git_commit="abc123")
    assert [c.name for c in first] == [c.name for c in second]
    assert [c.config for c in first] == [c.config for c in second]
    assert all(c.config.git_commit == "abc123" for c in first)


def test_report_sections_carry_the_papers_numbers():
    sharing = read_experiment(EXPERIMENTS / "sharing_ablation.yaml").spec.report
    assert sharing.layout == "sharing"
    assert (sharing.reference["xl-part"].top1, sharing.reference["xl-part"].params_m) == (67.5, 4)
    assert sharing.reference["none"].top1 is None and sharing.reference["none"].params_m == 128
    negatives = read_experiment(EXPERIMENTS / "negative_sampling.yaml").spec.report
    assert negatives.reference["current_sequence"].top5 == 89.8
    downstream = read_experiment(EXPERIMENTS / "downstream.yaml").spec.report
    assert downstream.layout == "downstream" and downstream.reference["audioset/ucf101-finetune"].top1 == 86.1
    components = read_experiment(EXPERIMENTS / "components.yaml").spec.report
    assert components.layout == "components" and components.reference["charades-finetune-m_bert"].map == 29.5


def test_only_selects_by_cell_variant_stage_or_glob():
    cells = cells_of("smoke", "tiny")
    assert [c.name for c in select(cells, ["xl-part"], "cli")] == ["smoke/xl-part/pretrain", "smoke/xl-part/synthetic_eval"]
    assert [c.name for c in select(cells, ["*/pretrain"], "cli")] == ["smoke/xl/pretrain", "smoke/xl-part/pretrain"]
    assert [c.name for c in select(cells, ["scratch"], "cli")] == ["smoke/scratch/synthetic_eval"]
    assert [c.name for c in select(cells, ["smoke/xl/synthetic_eval"], "cli")] == ["smoke/xl/synthetic_eval"]
    with pytest.raises(ConfigError, match="matches no cell"):
        select(cells, ["xl-prt"], "cli")


def test_a_scale_the_experiment_lacks_is_refused():
    with pytest.raises(ConfigError, match="scale 'paper' is not defined") as err:
        cells_of("smoke", "paper")
    assert err.value.key == "scales"


def test_errors_in_a_base_file_name_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {fusion: sideways}\n")
    (tmp_path / "exp.yaml").write_text(
        "base: base.yaml\ngrid: {variants: {a: {}}}\nstages: {pretrain: {kind: pretrain}}\n"
        "default_scale: tiny\nscales: {tiny: {stages: {pretrain: {}}}}\n")
    with pytest.raises(ConfigError) as err:
        expand(read_experiment(tmp_path / "exp.yaml"), "tiny", load_profile(PROFILES / "local.yaml"), tmp_path)
    assert err.value.source == str(tmp_path / "base.yaml") and err.value.key == "model.fusion"


# -- broken experiment files: refused by tools/launch.py before anything is submitted ------------------------------
BROKEN = {  # file -> the key path the error must name
    "unknown_top_key": "gird",
    "unknown_config_key": "grid.variants.xl.model.sharing.layer",
    "wrong_type": "scales.tiny.stages.pretrain.config.train.steps",
    "unknown_sampler": "grid.axes.objective.sampler",
    "missing_base": "base",
    "missing_base_file": "base",
    "empty_grid": "grid",
    "duplicate_variant": "grid.variants.xl",
    "duplicate_cell_names": "grid.axes",
    "impossible_gpus": "scales.tiny.stages.pretrain.resources.gpus_per_node",
    "impossible_nodes": "scales.tiny.stages.eval.resources.nodes",
    "time_limit_too_short": "scales.tiny.stages.pretrain.resources.time_limit_min",
    "unknown_stage_dependency": "stages.eval.after",
    "dependency_cycle": "stages.pretrain.after",
    "bad_scale": "scales.medium",
    "bad_default_scale": "default_scale",
    "missing_manifest": "scales.tiny.stages.pretrain.config.data.manifest",
    "unknown_stage_at_scale": "scales.tiny.stages.evaluate",
    "launcher_owned_key": "stages.pretrain.config.train.run_dir",
    "bad_fusion_value": "grid.variants.early.model.fusion",
    "report_unknown_variant": "report.reference.xl-prt",
    "bad_report_layout": "report.layout",
    "no_stages_at_scale": "scales.tiny.stages",
    "variant_not_mapping": "grid.variants.xl",
    "bad_variant_name": "grid.variants.XL Part",
    "downstream_after_finetune": "stages.eval.after",
    "stage_after_missing_scale_stage": "scales.tiny.stages.eval",
    "bad_resources_key": "scales.tiny.stages.pretrain.resources.gpus",
    "bad_stage_kind": "stages.eval.kind",
    "bad_config_in_scale": "scales.tiny.config.data.preset",
    "from_scratch_named_like_a_variant": "grid.from_scratch.xl",
    "from_scratch_without_downstream": "grid.from_scratch.scratch",
}
BROKEN_PROFILES = {
    "unknown_key": "gpus",
    "tasks_not_per_gpu": "tasks_per_node",
    "signal_after_limit": "signal_delay_s",
    "missing_partition": "partition",
}


def test_every_broken_file_has_a_case():
    assert {p.stem for p in BAD.glob("*.yaml")} == set(BROKEN)
    assert {p.stem for p in (BAD / "profiles").glob("*.yaml")} == set(BROKEN_PROFILES)
    assert len(BROKEN) + len(BROKEN_PROFILES) >= 20


def _refused(argv: list[str], runs: Path, capsys) -> str:
    assert launcher.main([*argv, "--runs-dir", str(runs)]) == 2
    assert not runs.exists()  # no index, no snapshot, no run directory: nothing was submitted
    return capsys.readouterr().err.replace("\n", " ")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_experiment_is_refused_naming_file_and_key(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = BAD / f"{name}.yaml"
    err = _refused([str(path)], tmp_path / "runs", capsys)
    assert f"{path}: {BROKEN[name]}:" in err, err


@pytest.mark.parametrize("name", sorted(BROKEN_PROFILES))
def test_broken_profile_is_refused_naming_file_and_key(name, tmp_path, capsys):
    path = BAD / "profiles" / f"{name}.yaml"
    err = _refused([str(EXPERIMENTS / "smoke.yaml"), "--profile", str(path)], tmp_path / "runs", capsys)
    assert f"{path}: {BROKEN_PROFILES[name]}:" in err, err


def test_paper_scale_on_a_cpu_profile_is_refused(tmp_path, capsys, manifests):
    err = _refused([str(EXPERIMENTS / "sharing_ablation.yaml"), "--scale", "paper"], tmp_path / "runs", capsys)
    assert "scales.paper.stages.pretrain.resources.nodes" in err


def test_the_command_line_exits_2_on_a_broken_file(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "launch.py"), str(BAD / "unknown_sampler.yaml"),
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "grid.axes.objective.sampler" in result.stderr and "cans_dissimilar" in result.stderr
    assert not (tmp_path / "runs").exists()
