"""Expansion of an experiment into cells: one config and one job per (variant, stage).

A cell's config is built from layers, each later one winning key by key:

1. the experiment's ``base``;
2. ``scales.<scale>.config`` (presets, data source, lengths);
3. the grid variant (``grid.variants.<name>``) and the axis values (``grid.axes``);
4. ``stages.<stage>.config`` and the stage's axis values (``stages.<stage>.axes``);
5. ``scales.<scale>.stages.<stage>.config``;
6. what the launcher owns: ``name``, ``stage``, ``train.run_dir``,
   ``git_commit`` and, for a stage that runs after a pretraining stage,
   ``downstream.pretrained`` (that stage's ``export/model.pt``).

Every resolved config goes through the strict config loader; an error names
the experiment file and the key path *in the experiment file* that set the
offending value (``grid.variants.xl.model.sharing.layers``). Expansion order is
deterministic: variants (then axis values) in file order, stages in
dependency order, then the ``grid.from_scratch`` variants. Cells are named
``<experiment>/<variant>/<stage>`` and run in
``<runs_dir>/<experiment>/<variant>/<stage>/``.

A from-scratch variant (``grid.from_scratch.<name>``, dotted keys like a grid
variant, in place of layer 3) runs every downstream stage with its own settings
but no ``after``: no pretraining cell, no ``downstream.pretrained``, so the
downstream stage starts from a randomly initialised model. It is not crossed
with ``grid.axes``: without pretraining, axes over the pretraining (the
sampler, the objective) would give identical cells.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from avbert.config import (
    Config,
    ConfigError,
    config_from_dict,
    deep_merge,
    overrides_to_dict,
)
from avbert.launch.profile import Profile
from avbert.launch.resources import Resources, resolve_resources
from avbert.launch.spec import Experiment, expand_axes, expand_grid, seeded_name

LAUNCHER_KEYS = ("name", "stage", "git_commit", "train.run_dir", "downstream.pretrained")


@dataclass(frozen=True)
class Cell:
    """One (variant, stage) of an experiment at one scale: its config, job shape and run directory."""

    experiment: str
    variant: str
    stage: str  # as named in run directories and jobs: the experiment's stage, plus its axis labels
    kind: str
    after: Optional[str]
    config: Config
    resources: Resources
    run_dir: Path
    stage_key: str = ""  # the stage's key under ``stages`` in the experiment file
    seed: Optional[int] = None  # the experiment's seed this cell runs (``seeds``), else None
    base_variant: str = ""  # the variant without its seed suffix

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.variant}/{self.stage}"

    @property
    def job_name(self) -> str:
        """How the job reads in ``squeue``."""
        return f"{self.experiment}:{self.variant}:{self.stage}"

    @property
    def upstream(self) -> Optional[str]:
        return f"{self.experiment}/{self.variant}/{self.after}" if self.after else None


@dataclass(frozen=True)
class Layer:
    """One mapping merged into a cell config, and where it is written."""

    label: str  # key path in the experiment file ("" for the top of a base file)
    data: dict
    source: str


def nest(flat: dict, source: str, label: str) -> dict:
    """``{"a.b": 1, "c": {"d": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": 2}}``."""
    out: dict = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        tree: Any = value
        for part in reversed(parts[1:]):
            tree = {part: tree}
        head = parts[0]
        if head in out and not (isinstance(out[head], dict) and isinstance(tree, dict)):
            raise ConfigError("set twice (once dotted, once nested)", source, f"{label}.{key}" if label else key)
        out[head] = deep_merge(out[head], tree) if head in out else tree
    return out


def _has_path(data: dict, parts: list[str]) -> bool:
    node: Any = data
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def locate(key: str, layers: list[Layer]) -> Layer:
    """The last layer that sets ``key`` (or the longest prefix of it)."""
    parts = key.split("[")[0].split(".")
    for length in range(len(parts), 0, -1):
        for layer in reversed(layers):
            if _has_path(layer.data, parts[:length]):
                return layer
    return layers[0]


def _message(err: ConfigError) -> str:
    prefix = ": ".join(part for part in (err.source, err.key) if part)
    text = str(err)
    return text[len(prefix) + 2:] if prefix and text.startswith(prefix + ": ") else text


def relocate(err: ConfigError, layers: list[Layer]) -> ConfigError:
    """A config error re-addressed to the experiment key that caused it."""
    if not err.key:
        return ConfigError(_message(err), layers[0].source)
    layer = locate(err.key, layers)
    key = f"{layer.label}.{err.key}" if layer.label else err.key
    return ConfigError(_message(err), layer.source, key)


def resolve_config(layers: list[Layer], owned: dict) -> Config:
    """Merge the layers and the launcher's keys into a checked Config."""
    for layer in layers:
        for key in LAUNCHER_KEYS:
            if _has_path(layer.data, key.split(".")):
                where = f"{layer.label}.{key}" if layer.label else key
                raise ConfigError("set by the launcher for every cell; remove it from the experiment", layer.source,
                                  where)
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer.data)
    try:
        return config_from_dict(deep_merge(merged, owned), source=layers[0].source)
    except ConfigError as err:
        raise relocate(err, layers) from None


def check_manifest(cfg: Config, layers: list[Layer]) -> Config:
    """A manifest data source must exist; the config keeps its absolute path."""
    if cfg.data.source != "manifest" or not cfg.data.manifest:
        return cfg
    path = Path(cfg.data.manifest).expanduser().resolve()
    if not path.is_file():
        layer = locate("data.manifest", layers)
        key = f"{layer.label}.data.manifest" if layer.label else "data.manifest"
        raise ConfigError(f"manifest not found: {path} (write it with tools/prepare_data.py)", layer.source, key)
    return replace(cfg, data=replace(cfg.data, manifest=str(path)))


def _stage_order(exp: Experiment, scale: str) -> list[str]:
    """The stages run at ``scale``, upstream before downstream, else in file order."""
    names = list(exp.spec.scales[scale].stages)

    def depth(name: str) -> int:
        after = exp.spec.stages[name].after
        return 0 if after is None else 1 + depth(after)

    return sorted(names, key=lambda name: (depth(name), list(exp.spec.stages).index(name)))


def _base_layer(exp: Experiment) -> Layer:
    if isinstance(exp.spec.base, str):
        return Layer("", exp.base, str(exp.path.parent / exp.spec.base))
    return Layer("base", exp.base, exp.source)


def _grid_layers(exp: Experiment, variant: str, chosen: dict) -> list[Layer]:
    src = exp.source
    layers = []
    if variant:
        label = f"grid.variants.{variant}"
        layers.append(Layer(label, nest(exp.spec.grid.variants[variant], src, label), src))
    if chosen:
        layers.append(Layer("grid.axes", nest(chosen, src, "grid.axes"), src))
    return layers


def _stage_layers(exp: Experiment, scale: str, stage: str, chosen: dict) -> list[Layer]:
    src = exp.source
    layers = [Layer(f"stages.{stage}.config", exp.spec.stages[stage].config, src)]
    if chosen:
        layers.append(Layer(f"stages.{stage}.axes", nest(chosen, src, f"stages.{stage}.axes"), src))
    label = f"scales.{scale}.stages.{stage}.config"
    layers.append(Layer(label, exp.spec.scales[scale].stages[stage].config, src))
    return layers


def expand(exp: Experiment, scale: str, profile: Profile, runs_dir: str | Path, git_commit: Optional[str] = None,
           check_files: bool = True, overrides: tuple[str, ...] = ()) -> list[Cell]:
    """Every cell of the experiment at ``scale``, variant by variant, stages in dependency order.

    ``overrides`` (``key.path=value``, from the launch command line) apply to every cell,
    after everything the experiment file says; an error in one names the command line."""
    if scale not in exp.spec.scales:
        raise ConfigError(f"scale '{scale}' is not defined here; defined: {', '.join(exp.spec.scales)}",
                          exp.source, "scales")
    root = Path(runs_dir).expanduser().resolve() / exp.name
    scale_layer = Layer(f"scales.{scale}.config", exp.spec.scales[scale].config, exp.source)
    command_line = [Layer("", overrides_to_dict(list(overrides)), "command line")] if overrides else []
    stages = _stage_order(exp, scale)
    seeds = exp.spec.seeds or [None]
    cells = []
    for variant_name, variant, chosen in expand_grid(exp.spec.grid):
        head = [_base_layer(exp), scale_layer, *_grid_layers(exp, variant, chosen)]
        for seed in seeds:
            for stage in stages:
                cells += _stage_cells(exp, scale, profile, root, variant_name, stage, head, git_commit, check_files,
                                      tail=_seed_layer(exp, seed) + command_line, seed=seed)
    for name, keys in exp.spec.grid.from_scratch.items():
        label = f"grid.from_scratch.{name}"
        head = [_base_layer(exp), scale_layer, Layer(label, nest(keys, exp.source, label), exp.source)]
        for seed in seeds:
            for stage in (s for s in stages if exp.spec.stages[s].kind != "pretrain"):
                cells += _stage_cells(exp, scale, profile, root, name, stage, head, git_commit, check_files,
                                      from_scratch=True, tail=_seed_layer(exp, seed) + command_line, seed=seed)
    return cells


def _seed_layer(exp: Experiment, seed: Optional[int]) -> list[Layer]:
    """The seed of one run of an experiment with ``seeds``: the model's initialisation and
    data order (``train.seed``) and the objective's draws (``objective.seed``)."""
    if seed is None:
        return []
    return [Layer("seeds", {"train": {"seed": seed}, "objective": {"seed": seed}}, exp.source)]


def _stage_cells(exp: Experiment, scale: str, profile: Profile, root: Path, variant: str, stage: str,
                 head: list[Layer], git_commit: Optional[str], check_files: bool,
                 from_scratch: bool = False, tail: Optional[list[Layer]] = None,
                 seed: Optional[int] = None) -> list[Cell]:
    """The cells of one stage of one variant: one per combination of the stage's axes."""
    cells = []
    for suffix, stage_chosen in expand_axes(exp.spec.stages[stage].axes):
        stage_name = f"{stage}-{suffix}" if suffix else stage
        layers = head + _stage_layers(exp, scale, stage, stage_chosen) + (tail or [])
        cell = _make_cell(exp, scale, profile, root, seeded_name(variant, seed), stage, stage_name, layers,
                          git_commit, check_files, from_scratch)
        cells.append(replace(cell, seed=seed, base_variant=variant))
    return cells


def _make_cell(exp: Experiment, scale: str, profile: Profile, root: Path, variant: str, stage: str,
               stage_name: str, layers: list[Layer], git_commit: Optional[str], check_files: bool,
               from_scratch: bool = False) -> Cell:
    spec = exp.spec.stages[stage]
    after = None if from_scratch else spec.after
    run_dir = root / variant / stage_name
    owned: dict = {"name": f"{exp.name}/{variant}/{stage_name}", "stage": spec.kind, "git_commit": git_commit,
                   "train": {"run_dir": str(run_dir)}}
    if after is not None and spec.kind != "pretrain":
        owned["downstream"] = {"pretrained": str(root / variant / after / "export" / "model.pt")}
    cfg = resolve_config(layers, owned)
    if check_files:
        cfg = check_manifest(cfg, layers)
    key = f"scales.{scale}.stages.{stage}.resources"
    resources = resolve_resources(exp.spec.scales[scale].stages[stage].resources, profile, exp.source, key)
    return Cell(exp.name, variant, stage_name, spec.kind, after, cfg, resources, run_dir, stage)


def select(cells: list[Cell], patterns: list[str], source: str) -> list[Cell]:
    """Cells matching any ``--only`` pattern: a cell name, ``variant/stage`` or ``variant`` (globs
    allowed); a variant run over seeds matches by its name with or without the seed."""
    import fnmatch

    if not patterns:
        return cells
    chosen = []
    for pattern in patterns:
        matched = [cell for cell in cells if any(fnmatch.fnmatchcase(text, pattern) for text in
                                                 (cell.name, f"{cell.variant}/{cell.stage}", cell.variant,
                                                  cell.base_variant, f"{cell.base_variant}/{cell.stage}"))]
        if not matched:
            names = ", ".join(cell.name for cell in cells)
            raise ConfigError(f"--only {pattern!r} matches no cell; cells: {names}", source)
        chosen.extend(cell for cell in matched if cell not in chosen)
    return [cell for cell in cells if cell in chosen]
