"""The paper's tables built from an experiment's rows (their columns are in
``avbert.results.columns``, the split, seed and table-(c) summary rows in
``avbert.results.summaries``, a row's cost and provenance in ``avbert.results.runs``).

A row is an evaluated cell with the stages it starts from (see
``avbert.results.experiments``). Every row of the experiment is in the table
whatever its state: ``state`` says ``done``, ``running``, ``preempted``,
``pending``, ``failed`` or ``missing`` (of the first stage of the row that is
not done) and ``detail`` names that stage with its progress or its error.

Layouts (columns besides variant, stage, protocol, state and cost):

* ``sharing``: XL (cross-layer sharing), XT (cross-Transformer sharing: no,
  All, Part), Transformer parameters (M) and the paper's, top-1, top-5;
* ``negative_sampling``: method (Current-Sequence, Current-MiniBatch,
  CANS-Similar, CANS-Dissimilar), top-1, top-5;
* ``fusion``: fusion (early, mid, late), Transformer parameters, top-1, top-5;
* ``downstream``: dataset, feature, split/fold, pretrained weights, top-1,
  top-5, mAP and the test views; the rows of a stage expanded over splits or
  folds are followed by their ``mean`` row;
* ``components`` (the paper's table (c)): a row per part of the model evaluated
  (V-CNN, A-CNN, M-CNN, V-BERT, A-BERT, M-BERT: ``downstream.feature``), a
  column group per downstream set (Charades mAP, Kinetics-Sounds top-1 / top-5).

Each metric has the paper's number beside it (the experiment's
``report.reference``: by variant, or by stage in the downstream layout) and
the difference, ours minus paper, in points, but only on rows whose
downstream task is one the paper reports (``PAPER_TASKS``; never the
synthetic set); the paper columns are left out of a table where no row has
one. Top-1 has chance beside it (100 / the number of classes of the row's
evaluation set); top-5 is left out of a table whose evaluated sets all have
5 classes or fewer, where it is 100 whatever the model. Cost: hours (GPU-hours,
or CPU-hours for CPU runs) summed over the row's stages, clips per second of
the row's first stage that logged any (the pretraining), peak memory over the
row's stages.

A row of a from-scratch variant (``grid.from_scratch``) is its downstream cell
alone: no pretraining in its chain, its weights ``scratch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from avbert.models.heads import TASK_FEATURE
from avbert.results.columns import (
    DATASET_LABELS,
    FEATURE_LABELS,
    LAYOUT_COLUMNS,
    METHOD_LABELS,
    METRICS,
    OPTIONAL_COST_COLUMNS,
    PAPER_PROTOCOL,
    PAPER_TASKS,
    TOP5_MAX_TRIVIAL,
    XL_LABELS,
    XT_LABELS,
    Column,
    Table,
    cost_columns,
)
from avbert.results.experiments import DOWNSTREAM_KINDS, ExperimentReport, RowSpec
from avbert.results.runs import StageRun, row_cost, stage_decision, stage_detail, stage_word
from avbert.results.summaries import (
    component_rows,
    seed_columns,
    with_seed_means,
    with_split_means,
)
from avbert.rundir import EvalRecord


def section(config: Optional[dict], *keys: str):
    """``config[k1][k2]...`` or None."""
    node = config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


@dataclass
class RowRuns:
    """A row with what its cells left on disk, upstream first."""

    spec: RowSpec
    runs: list[StageRun]

    def config(self, index: int) -> Optional[dict]:
        """The config a cell ran with, else the one the experiment gives it."""
        return self.runs[index].config or self.spec.chain[index].config

    @property
    def last_config(self) -> Optional[dict]:
        return self.config(len(self.runs) - 1)

    @property
    def evaluation(self) -> EvalRecord:
        """The evaluated cell's ``eval.json``; an empty record for a row without one."""
        record = self.runs[-1].eval_record if self.spec.evaluated else None
        return record or EvalRecord()


def row_state(spec: ExperimentReport, row: RowRuns) -> tuple[str, str]:
    """(state, detail) of a row: that of its first stage that is not done."""
    for cell, run in zip(row.spec.chain, row.runs):
        decided = stage_decision(run, spec.job_state(cell.variant, cell.stage), cell.kind in DOWNSTREAM_KINDS,
                                 spec.job_state_unix(cell.variant, cell.stage))
        state = stage_word(run, decided)
        if state != "done":
            return state, stage_detail(run, state, decided.reason)
    return "done", ""


def row_task(row: RowRuns) -> Optional[str]:
    """The downstream task an evaluated row reports (its evaluation's, else its config's); None otherwise."""
    if row.spec.evaluated is None:
        return None
    return row.evaluation.task or section(row.last_config, "downstream", "task")


def row_classes(row: RowRuns) -> tuple[Optional[int], bool]:
    """(classes, multi-label) of an evaluated row's set: what its evaluation recorded, else what its
    config trains on (``downstream.num_classes``, else the synthetic set's count when the data is
    synthetic); (None, False) when unknown, e.g. a manifest's set before it has run."""
    if row.spec.evaluated is None:
        return None, False
    if row.evaluation.num_classes:
        return row.evaluation.num_classes, bool(row.evaluation.multilabel)
    config = row.last_config
    classes = section(config, "downstream", "num_classes")
    if not classes and section(config, "data", "source") == "synthetic":
        classes = section(config, "data", "synthetic", "num_classes")
    return (int(classes) if classes else None), False


def chance_top1(classes: Optional[int], multilabel: bool) -> Optional[float]:
    """Top-1 (%) of a guess that ignores the input; none for multi-label sets (reported by mAP)."""
    return 100.0 / classes if classes and not multilabel else None


def row_reference(spec: ExperimentReport, row: RowRuns) -> dict:
    """The paper's numbers of a row, only when its downstream task and protocol are the paper's.

    A reference beside a synthetic row would compare our model on a 4-class toy set with the
    paper's on Kinetics-Sounds: the gap says nothing; nor does a linear probe's beside the
    paper's fine-tuning. It is not shown rather than refused when the file is read, because
    references are keyed by variant and one experiment file evaluates the same variant on a
    paper task at the paper scale and on the synthetic set at the tiny scale
    (``sharing_ablation``): the reference is right for the one and left out of the other.
    """
    task, cell = row_task(row), row.spec.evaluated
    if task not in PAPER_TASKS or cell is None or cell.kind != PAPER_PROTOCOL[task]:
        return {}
    return spec.reference_for(row.spec)


def add_reference(row: dict, reference: dict) -> None:
    """Paper numbers beside ours, and ours minus paper."""
    for name in METRICS:
        paper = reference.get(name)
        row[f"paper_{name}"] = float(paper) if paper is not None else None
        ours = row.get(name)
        row[f"delta_{name}"] = ours - row[f"paper_{name}"] if ours is not None and paper is not None else None
    params = reference.get("params_m")
    row["paper_params_m"] = float(params) if params is not None else None


def model_config(row: RowRuns) -> Optional[dict]:
    """The model a row evaluates: its pretraining's, else the one its evaluation
    recorded, else the evaluated cell's own when it starts from scratch."""
    for index, cell in enumerate(row.spec.chain):
        if cell.kind == "pretrain" and section(row.config(index), "model"):
            return section(row.config(index), "model")
    if row.evaluation.model_config:
        return row.evaluation.model_config
    last = row.last_config
    return section(last, "model") if last and not section(last, "downstream", "pretrained") else None


def metrics_row(spec: ExperimentReport, row: RowRuns, params_of: Callable) -> dict:
    """State, metrics, reference, cost and the model facts of one row."""
    cell = row.spec.evaluated
    state, detail = row_state(spec, row)
    last = row.spec.chain[-1]
    out = {"variant": row.spec.variant, "stage": last.stage, "protocol": cell.kind if cell else "",
           "state": state, "detail": detail, "seed": last.seed, "_base_variant": last.row_variant}
    metrics = row.evaluation.metrics
    for name in METRICS:
        out[name] = float(metrics[name]) if metrics.get(name) is not None else None
    classes, multilabel = row_classes(row)
    if classes is not None and classes <= TOP5_MAX_TRIVIAL:  # 100 whatever the model
        out["top5"] = None
    out.update(chance_top1=chance_top1(classes, multilabel), _classes=classes, _evaluated=cell is not None)
    add_reference(out, row_reference(spec, row))
    out.update(row_cost(row.runs))
    model = model_config(row) or {}
    out["params_m"] = params_of(model) if model else None
    sharing = model.get("sharing") or {}
    out["xl"] = XL_LABELS.get(sharing.get("layers"), sharing.get("layers"))
    out["xt"] = XT_LABELS.get(sharing.get("modalities"), sharing.get("modalities"))
    out["fusion"] = model.get("fusion")
    sampler = next((section(row.config(i), "objective", "sampler") for i, c in enumerate(row.spec.chain)
                    if c.kind == "pretrain"), None)
    out["method"] = METHOD_LABELS.get(sampler, sampler)
    return out


def recorded(value, configured):
    """What the evaluation recorded, else what the config asked for."""
    return value if value is not None else configured


def weights_label(row: RowRuns, pretrained_label: Callable) -> str:
    """Where an evaluated row's weights come from: its upstream stage's name
    (``pretrain``), else the export path as ``pretrained_label`` shows it."""
    if len(row.spec.chain) > 1:
        return row.spec.chain[-2].stage
    return pretrained_label(recorded(row.evaluation.pretrained, section(row.last_config, "downstream", "pretrained")))


def downstream_fields(row: RowRuns, pretrained_label: Callable) -> dict:
    """Dataset, feature, split, weights and test views of an evaluated row."""
    if row.spec.evaluated is None:
        return {}
    config, evaluation = row.last_config or {}, row.evaluation
    task = evaluation.task or section(config, "downstream", "task")
    split = recorded(evaluation.split, section(config, "downstream", "split"))
    views = recorded(evaluation.test_views, section(config, "data", "test_views"))
    crops = recorded(evaluation.test_crops, section(config, "data", "test_crops"))
    feature = evaluation.feature or section(config, "downstream", "feature") or TASK_FEATURE.get(task)
    return {"dataset": DATASET_LABELS.get(task, task), "feature": FEATURE_LABELS.get(feature, feature),
            "_task": task, "_feature": feature,
            "split": str(split) if split is not None else None,
            "pretrained": weights_label(row, pretrained_label),
            "views": f"{views}x{crops}" if views is not None and crops is not None else None}


def hours_header(runs: list[StageRun]) -> str:
    """GPU-hours when every run that says where it ran used a GPU, CPU-hours when
    all used CPUs, device-hours when they are mixed or none says."""
    devices = {run.device for run in runs if run.exists}
    if devices == {"cuda"}:
        return "GPU-hours"
    if devices == {"cpu"}:
        return "CPU-hours"
    return "device-hours"


CHANGED_FLAG = "experiment file changed since launch"
PAPER_NOTE = "paper: Lee et al., ICLR 2021 (AVBERT); Δ = ours - paper, in points."
CHANCE_NOTE = ("chance top-1: 100 / the number of classes of the row's evaluation set, what a model that "
               "learned nothing scores.")
NOTES = [
    "hours: wall time x ranks summed over the row's stages; clips/s: median over the log intervals of the "
    "row's first stage (the pretraining); peak mem: largest over the row's stages (GPU allocated memory, or "
    "peak resident set on CPU).",
    "state: done, running, preempted (to be requeued), pending, failed or missing (no run yet), of the row's "
    "first stage that is not done; detail names that stage, its progress or its error.",
]


def build_table(spec: ExperimentReport, runs: dict[tuple[str, str], StageRun], params_of: Callable,
                pretrained_label: Callable) -> Table:
    """The experiment's table: one row per evaluated cell (with its upstream stages), in the experiment's order."""
    rows = []
    for row_spec in spec.rows():
        row = RowRuns(row_spec, [runs[(c.variant, c.stage)] for c in row_spec.chain])
        values = metrics_row(spec, row, params_of)
        if spec.layout in ("downstream", "components"):
            values.update(downstream_fields(row, pretrained_label))
            cell = row_spec.evaluated
            expanded = cell is not None and sum(c.base_stage == cell.base_stage and c.variant == cell.variant
                                                for c in spec.cells) > 1
            values["_group"] = cell.base_stage if expanded else None
        rows.append(values)
    if spec.layout == "downstream":
        rows = with_split_means(rows)
        layout_columns = LAYOUT_COLUMNS["downstream"]
    elif spec.layout == "components":
        rows, layout_columns = component_rows(rows)
    else:
        layout_columns = LAYOUT_COLUMNS[spec.layout]
    if spec.seeds and spec.layout != "components":
        rows = with_seed_means(rows, len(spec.seeds))
        layout_columns = seed_columns(layout_columns)
    columns = shown_columns(layout_columns, rows) + [
        column for column in cost_columns(hours_header(list(runs.values())))
        if column.key not in OPTIONAL_COST_COLUMNS or any(row.get(column.key) for row in rows)]
    keys = {column.key for column in columns}
    notes = ([PAPER_NOTE] if any(key.startswith("paper_") and key != "paper_params_m" for key in keys) else [])
    notes += [CHANCE_NOTE] if "chance_top1" in keys else []
    if spec.file_change:
        rows = [{**row, "provenance": "; ".join(filter(None, [row.get("provenance"), CHANGED_FLAG]))} for row in rows]
        notes.append(f"{spec.file_change}: the rows are the cells as launched (their configs are in the index and "
                     "the run directories); relaunch to run the file as it is now.")
        if "provenance" not in keys:
            columns.append(next(c for c in cost_columns("hours") if c.key == "provenance"))
    rows = [{column.key: row.get(column.key) for column in columns} for row in rows]
    return Table(spec.name, spec.title, spec.layout, columns, rows, notes + NOTES)


def top5_trivial(rows: list[dict]) -> bool:
    """Whether every evaluated row's set is known to have too few classes for top-5 to tell anything."""
    evaluated = [row for row in rows if row.get("_evaluated")]
    return bool(evaluated) and all(row["_classes"] is not None and row["_classes"] <= TOP5_MAX_TRIVIAL
                                   for row in evaluated)


def shown_columns(columns: list[Column], rows: list[dict]) -> list[Column]:
    """The layout's columns less those that would say nothing: the paper's and the differences when no
    row has a paper number, top-5 when it is trivial, chance when no row's class count is known."""
    paper = any(row.get(column.key) is not None for row in rows for column in columns
                if column.key.startswith("paper_"))
    dropped = set()
    if not paper:
        dropped |= {column.key for column in columns if column.key.startswith(("paper_", "delta_"))}
    if top5_trivial(rows):
        dropped |= {"top5", "paper_top5", "delta_top5"}
    if all(row.get("chance_top1") is None for row in rows):
        dropped.add("chance_top1")
    return [column for column in columns if column.key not in dropped]
