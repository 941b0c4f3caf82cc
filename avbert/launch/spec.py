"""The experiment file: one YAML per experiment in ``experiments/``.

An experiment is a base config, a grid of variants, a chain of stages, the
scales it runs at, and how its results table is laid out::

    name: sharing_ablation            # optional; defaults to the file name
    base: {model: {fusion: mid}}      # inline mapping, or a config file path (relative to this file)
    default_scale: paper
    grid:
      variants:                       # named variants, each a mapping of dotted config keys
        xl: {model.sharing.layers: cross_layer, model.sharing.modalities: none}
      axes:                           # and/or cartesian axes: key -> [values] or {label: value}
        objective.sampler: [current_sequence, cans_similar]
      from_scratch:                   # variants without pretraining: the downstream stages only,
        scratch: {model.sharing.modalities: lowrank}  # from random weights, once (not crossed with axes)
    stages:
      pretrain: {kind: pretrain}
      kinetics_sounds: {kind: finetune, after: pretrain, config: {downstream: {task: kinetics_sounds}}}
    scales:                           # a stage runs at a scale when that scale lists it
      paper:
        config: {model: {preset: paper}}
        stages:
          pretrain: {config: {...}, resources: {nodes: 8, gpus_per_node: 8, hours: 60}}
    report: {layout: sharing, title: ..., reference: {xl: {top1: 65.7, top5: 89.9, map: null, params_m: 21}}}

Reading is strict: duplicate keys, unknown keys, wrong types and values outside
the allowed set are refused with the file, the dotted key path and what is
allowed. The cell configs themselves are checked when the grid is expanded
(``avbert.launch.grid``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from avbert.config import ConfigError, merge_into, read_yaml
from avbert.launch.resources import StageResources
from avbert.rundir.index import ROW_PER_STAGE_LAYOUTS

SCALES = ("paper", "tiny")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
NAME_RULE = "lowercase letters, digits and _ . + -, starting with a letter or digit"


@dataclass
class ScaleStage:
    """A stage at one scale: its config on top of the others, and its resources."""

    config: dict[str, Any] = field(default_factory=dict)
    resources: StageResources = field(default_factory=StageResources)


@dataclass
class ScaleSpec:
    """What a scale changes (data, presets, lengths) and which stages run at it."""

    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, ScaleStage] = field(default_factory=dict)


@dataclass
class StageSpec:
    """One stage of every cell; ``after`` names the stage whose export it starts from."""

    kind: Literal["pretrain", "finetune", "linear"] = "pretrain"
    after: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)  # expands one stage into several (splits, protocols)


@dataclass
class GridSpec:
    """Named variants and/or axes, every stage for each; ``from_scratch`` variants run only the
    downstream stages, on a randomly initialised model: the baseline pretraining has to beat."""

    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)
    from_scratch: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ReferenceSpec:
    """The paper's numbers for one row of the results table."""

    top1: Optional[float] = None
    top5: Optional[float] = None
    map: Optional[float] = None
    params_m: Optional[float] = None


@dataclass
class ReportSpec:
    """How the results tool lays out this experiment's table.

    ``reference`` is keyed by variant; in the ``downstream`` and ``components`` layouts,
    whose rows are evaluated stages, by stage or ``variant/stage`` (``reference_keys``).
    The tables show it only beside rows whose task and protocol are the paper's, never
    the synthetic set (``avbert.results.tables.row_reference``).
    """

    layout: Literal["sharing", "negative_sampling", "fusion", "downstream", "components"] = "sharing"
    title: str = ""
    reference: dict[str, ReferenceSpec] = field(default_factory=dict)


@dataclass
class ExperimentSpec:
    name: str = ""
    description: str = ""
    base: Any = None
    default_scale: Literal["paper", "tiny"] = "paper"
    # Run every variant once per seed (train.seed and objective.seed), as variants named
    # <variant>-seed<n>; the tables show each row's mean, standard deviation and n.
    seeds: list[int] = field(default_factory=list)
    scales: dict[str, ScaleSpec] = field(default_factory=dict)
    grid: GridSpec = field(default_factory=GridSpec)
    stages: dict[str, StageSpec] = field(default_factory=dict)
    report: ReportSpec = field(default_factory=ReportSpec)


@dataclass
class Experiment:
    """A checked experiment file: its spec, its path and its resolved base config."""

    spec: ExperimentSpec
    path: Path
    base: dict

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> str:
        return str(self.path)


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else "known: " + ", ".join(candidates)


def check_duplicate_keys(text: str, source: str) -> None:
    """PyYAML keeps the last of two equal keys; an experiment file may not have any."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", source) from None
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            full = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"duplicate key (lines {seen[key]} and {line})", source, full)
            seen[key] = line
            stack.append((value_node, full))


def read_experiment(path: str | Path) -> Experiment:
    """Read and check the structure of an experiment file."""
    path = Path(path)
    source = str(path)
    data = read_yaml(path)
    check_duplicate_keys(path.read_text(), source)
    spec = merge_into(ExperimentSpec(), data, source)
    spec.name = spec.name or path.stem
    _check_name(spec.name, source, "name")
    base = _read_base(spec.base, path, source)
    check_structure(spec, source)
    return Experiment(spec, path, base)


def _check_name(name: str, source: str, key: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"invalid name {name!r}: use {NAME_RULE}", source, key)


def _read_base(base: Any, path: Path, source: str) -> dict:
    """The base config: inline, or a YAML file relative to the experiment file."""
    if base is None:
        raise ConfigError("missing required key: the base config (a mapping, or a config file path)", source, "base")
    if isinstance(base, dict):
        return base
    if isinstance(base, str):
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"base config file not found: {base_path}", source, "base")
        return read_yaml(base_path)
    raise ConfigError(f"expected a mapping or a file path, got {base!r}", source, "base")


def check_structure(spec: ExperimentSpec, source: str) -> None:
    """Scales, stages, dependencies, grid and report refer to things that exist."""
    _check_scales(spec, source)
    _check_stages(spec, source)
    _check_grid(spec.grid, source)
    _check_from_scratch(spec, source)
    _check_report(spec, source)
    _check_seeds(spec, source)


def _check_scales(spec: ExperimentSpec, source: str) -> None:
    if not spec.scales:
        raise ConfigError(f"no scales; define at least one of: {', '.join(SCALES)}", source, "scales")
    for name, scale in spec.scales.items():
        if name not in SCALES:
            raise ConfigError(f"unknown scale; allowed values: {', '.join(SCALES)}", source, f"scales.{name}")
        if not scale.stages:
            raise ConfigError("no stages run at this scale", source, f"scales.{name}.stages")
        for stage in scale.stages:
            if stage not in spec.stages:
                raise ConfigError(f"unknown stage; {_closest(stage, list(spec.stages))}", source,
                                  f"scales.{name}.stages.{stage}")
            after = spec.stages[stage].after
            if after is not None and after in spec.stages and after not in scale.stages:
                raise ConfigError(f"runs after '{after}', which does not run at scale '{name}'", source,
                                  f"scales.{name}.stages.{stage}")
    if spec.default_scale not in spec.scales:
        raise ConfigError(f"scale '{spec.default_scale}' is not defined; defined: {', '.join(spec.scales)}",
                          source, "default_scale")


def _check_stages(spec: ExperimentSpec, source: str) -> None:
    if not spec.stages:
        raise ConfigError("no stages; define at least one (e.g. pretrain: {kind: pretrain})", source, "stages")
    for name, stage in spec.stages.items():
        _check_name(name, source, f"stages.{name}")
        _check_axes(stage.axes, source, f"stages.{name}.axes")
        if stage.after is None:
            continue
        key = f"stages.{name}.after"
        if stage.after not in spec.stages:
            raise ConfigError(f"unknown stage '{stage.after}'; {_closest(stage.after, list(spec.stages))}", source, key)
        upstream = spec.stages[stage.after]
        if upstream.axes:
            raise ConfigError(f"stage '{stage.after}' expands over axes; a stage can only run after a single one",
                              source, key)
        if stage.kind != "pretrain" and upstream.kind != "pretrain":
            raise ConfigError(f"'{stage.after}' is a {upstream.kind} stage; downstream stages start from a "
                              "pretraining stage's export", source, key)
        _check_acyclic(spec, name, source)


def _check_acyclic(spec: ExperimentSpec, start: str, source: str) -> None:
    seen, current = [start], spec.stages[start].after
    while current is not None:
        if current in seen:
            chain = " -> ".join([*seen, current])
            raise ConfigError(f"stage dependencies form a cycle: {chain}", source, f"stages.{start}.after")
        seen.append(current)
        current = spec.stages[current].after


def axis_points(values: Any) -> list[tuple[str, Any]]:
    """(label, value) pairs of one axis: a list labels each value by itself."""
    if isinstance(values, dict):
        return [(str(label), value) for label, value in values.items()]
    return [(str(value).lower() if isinstance(value, bool) else str(value), value) for value in values]


def expand_axes(axes: dict) -> list[tuple[str, dict]]:
    """Every combination of the axes, in file order: (label, {dotted key: value})."""
    combos: list[tuple[list[str], dict]] = [([], {})]
    for key, values in axes.items():
        combos = [([*labels, label], {**chosen, key: value})
                  for labels, chosen in combos for label, value in axis_points(values)]
    return [("-".join(labels), chosen) for labels, chosen in combos]


def expand_grid(grid: GridSpec) -> list[tuple[str, str, dict]]:
    """Cells of the grid: (name, variant, {dotted key: axis value}); variants x axes, in file order."""
    variants = list(grid.variants) or [""]
    out = []
    for variant in variants:
        for label, chosen in expand_axes(grid.axes):
            name = "-".join(part for part in (variant, label) if part)
            out.append((name, variant, chosen))
    return out


def _check_axes(axes: dict, source: str, key: str) -> None:
    for axis, values in axes.items():
        if not isinstance(values, (dict, list)):
            raise ConfigError(f"expected a list of values or a mapping label -> value, got {values!r}", source,
                              f"{key}.{axis}")
        labels = [label for label, _ in axis_points(values)]
        if len(set(labels)) != len(labels):
            duplicate = next(label for label in labels if labels.count(label) > 1)
            raise ConfigError(f"two values share the label {duplicate!r}", source, f"{key}.{axis}")
        if not labels:
            raise ConfigError("an axis needs at least one value", source, f"{key}.{axis}")
        for label in labels:
            if not NAME_PATTERN.match(str(label)):
                raise ConfigError(f"value label {label!r} cannot be part of a cell name ({NAME_RULE}); "
                                  "give the axis as a mapping label -> value", source, f"{key}.{axis}")


def _check_grid(grid: GridSpec, source: str) -> None:
    if not grid.variants and not grid.axes:
        raise ConfigError("empty grid: give named variants and/or axes", source, "grid")
    for name in grid.variants:
        _check_name(name, source, f"grid.variants.{name}")
    _check_axes(grid.axes, source, "grid.axes")
    seen: set[str] = set()
    for name, variant, _ in expand_grid(grid):
        if name in seen:
            raise ConfigError(f"two cells are both named '{name}'; rename a variant or relabel an axis value",
                              source, f"grid.variants.{variant}" if variant else "grid.axes")
        seen.add(name)


SEED_SUFFIX = "-seed"


def seeded_name(variant: str, seed: Optional[int]) -> str:
    """The variant of one seed: ``xl-part-seed1``; the variant itself without seeds."""
    return variant if seed is None else f"{variant}{SEED_SUFFIX}{seed}"


def _check_seeds(spec: ExperimentSpec, source: str) -> None:
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds repeat: {spec.seeds}", source, "seeds")
    if any(seed < 0 for seed in spec.seeds):
        raise ConfigError(f"seeds must be >= 0, got {spec.seeds}", source, "seeds")


def _check_from_scratch(spec: ExperimentSpec, source: str) -> None:
    """A from-scratch variant has a name no grid cell has, and downstream stages to run."""
    grid_names = {name for name, _, _ in expand_grid(spec.grid)}
    downstream = [name for name, stage in spec.stages.items() if stage.kind != "pretrain"]
    for name in spec.grid.from_scratch:
        key = f"grid.from_scratch.{name}"
        _check_name(name, source, key)
        if name in grid_names:
            raise ConfigError(f"'{name}' is also a grid variant; give the from-scratch variant its own name",
                              source, key)
        if not downstream:
            raise ConfigError("no downstream (finetune or linear) stage to run from scratch", source, key)


def reference_keys(spec: ExperimentSpec) -> list[str]:
    """What ``report.reference`` may be keyed by. Tables of one row per variant (sharing,
    negative sampling, fusion): a variant. Tables of downstream rows (downstream, components):
    a stage (``ucf101-finetune``, its rows over every split), a stage expanded over its axes
    (``kinetics_sounds-finetune-v_cnn``), either one for one variant (``audioset/ucf101-finetune``)."""
    variants = [*(name for name, _, _ in expand_grid(spec.grid)), *spec.grid.from_scratch]
    if spec.report.layout not in ROW_PER_STAGE_LAYOUTS:
        return variants
    stages = []
    for name, stage in spec.stages.items():
        stages.append(name)
        stages += [f"{name}-{label}" for label, _ in expand_axes(stage.axes) if label]
    return [*stages, *(f"{variant}/{stage}" for variant in variants for stage in stages)]


def _check_report(spec: ExperimentSpec, source: str) -> None:
    """Every reference key names rows of the table (``reference_keys``): a key that matches no
    row would leave the paper's number out of the table without a word."""
    keys = reference_keys(spec)
    what = "stage (or variant/stage)" if spec.report.layout in ROW_PER_STAGE_LAYOUTS else "variant"
    for row in spec.report.reference:
        if row not in keys:
            raise ConfigError(f"matches no row of the table: not a {what} of this experiment; "
                              f"{_closest(row, keys)}", source, f"report.reference.{row}")