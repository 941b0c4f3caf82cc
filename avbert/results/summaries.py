"""Summary rows of a results table: the mean over a stage's splits or folds, the mean and
spread over an experiment's seeds, and the paper's table (c) laid out by model part."""

from __future__ import annotations

import math
import statistics

from avbert.models.heads import MULTILABEL_TASKS
from avbert.results.columns import (
    DATASET_LABELS,
    HEAD,
    METRICS,
    TOP5_MAX_TRIVIAL,
    Column,
)
from avbert.results.runs import row_cost


def mean_over_splits(per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metric-wise mean over splits (UCF101 splits, ESC-50 folds); a metric
    missing from some split is averaged over the splits that have it."""
    keys = sorted({key for metrics in per_split.values() for key in metrics})
    out = {}
    for key in keys:
        values = [m[key] for m in per_split.values() if key in m and not math.isnan(float(m[key]))]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def mean_row(group: list[dict]) -> dict:
    """The mean over the splits/folds of one variant and downstream stage.

    Metrics are averaged over the done rows; the state is ``done`` when all
    are, else ``partial`` with how many are in. The paper's number is the
    group's (the paper reports split means), the cost that of all the group's
    stages, a shared pretraining counted once.
    """
    done = [row for row in group if row["state"] == "done"]
    row = {key: group[0].get(key) for key in ("variant", "protocol", "dataset", "feature", "pretrained", "views",
                                              "xl", "xt", "fusion", "method", "params_m", "paper_params_m",
                                              "_evaluated")}
    for key in ("chance_top1", "_classes"):  # the splits' where they agree (a split not yet run has none)
        values = {r[key] for r in group if r[key] is not None}
        row[key] = values.pop() if len(values) == 1 else None
    row.update(stage=group[0]["_group"], split="mean", detail=f"{len(done)}/{len(group)} splits",
               state="done" if len(done) == len(group) else "partial")
    means = mean_over_splits({r["stage"]: {n: r[n] for n in METRICS if r[n] is not None} for r in done})
    for name in METRICS:
        row[name] = means.get(name)
        papers = {r[f"paper_{name}"] for r in group}
        row[f"paper_{name}"] = papers.pop() if len(papers) == 1 else None
        paper = row[f"paper_{name}"]
        row[f"delta_{name}"] = row[name] - paper if row[name] is not None and paper is not None else None
    runs = list({id(run): run for r in group for run in r["_runs"]}.values())  # the pretraining once
    row.update(row_cost(runs), clips_per_s=None)
    return row


def with_split_means(rows: list[dict]) -> list[dict]:
    """Rows, each group of one variant's stage expanded over splits followed by its mean row."""
    groups: dict = {}
    for row in rows:
        if row.get("_group"):
            groups.setdefault((row["variant"], row["_group"]), []).append(row)
    out = []
    for row in rows:
        out.append(row)
        group = groups.get((row["variant"], row.get("_group")))
        if group and len(group) > 1 and row is group[-1]:
            out.append(mean_row(group))
    return out


def task_metrics(task: str) -> tuple[str, ...]:
    """What the paper reports on a set: mAP on multi-label sets, top-1 and top-5 else."""
    return ("map",) if task in MULTILABEL_TASKS else ("top1", "top5")


def component_rows(rows: list[dict]) -> tuple[list[dict], list[Column]]:
    """The paper's table (c): a row per (variant, feature), a column group per downstream set.

    Each evaluated row (one set, one feature) gives its set's metrics, with the paper's and
    the difference, to the row of its feature; that row's state is ``done`` when all its sets
    are, else that of its first set that is not; its cost is that of all its stages, a shared
    pretraining counted once. Top-5 of a set of 5 classes or fewer is left out.
    """
    merged: dict[tuple, dict] = {}
    tasks: list[str] = []
    for row in rows:
        if not row.get("_evaluated") or row.get("_task") is None:
            continue
        task = row["_task"]
        tasks += [task] if task not in tasks else []
        out = merged.setdefault((row["variant"], row["_feature"]), {
            "variant": row["variant"], "component": row["feature"], "pretrained": row.get("pretrained"),
            "params_m": row.get("params_m"), "_evaluated": True, "_classes": None, "_parts": []})
        out["_parts"].append(row)
        for name in task_metrics(task):
            for prefix in ("", "paper_", "delta_"):
                out[f"{prefix}{task}_{name}"] = row.get(f"{prefix}{name}")
        out[f"{task}_classes"] = row.get("_classes")
    table = []
    for out in merged.values():
        parts = out.pop("_parts")
        pending = [part for part in parts if part["state"] != "done"]
        out["state"], out["detail"] = (pending[0]["state"], pending[0]["detail"]) if pending else ("done", "")
        runs = list({id(run): run for part in parts for run in part["_runs"]}.values())
        out.update(row_cost(runs))
        table.append(out)
    columns = [*HEAD[:1], Column("component", "component"), Column("pretrained", "pretrained")]
    for task in tasks:
        label = DATASET_LABELS.get(task, task)
        classes = {out.get(f"{task}_classes") for out in table} - {None}
        for name in task_metrics(task):
            if name == "top5" and classes and max(classes) <= TOP5_MAX_TRIVIAL:
                continue  # 100 whatever the model
            key = f"{task}_{name}"
            columns += [Column(key, f"{label} {METRICS[name]}", "f1"),
                        Column(f"paper_{key}", f"paper {label} {METRICS[name]}", "f1"),
                        Column(f"delta_{key}", f"Δ {label} {METRICS[name]}", "delta")]
    return table, columns


def seed_columns(columns: list[Column]) -> list[Column]:
    """The layout's columns with the seed after the variant and each metric's standard
    deviation over seeds after the metric."""
    out = []
    for column in columns:
        out.append(column)
        if column.key == "variant":
            out += [Column("seed", "seed"), Column("seeds", "seeds done")]
        if column.key in METRICS:
            out.append(Column(f"{column.key}_std", f"± {METRICS[column.key]}", "f1"))
    return out


def with_seed_means(rows: list[dict], asked: int) -> list[dict]:
    """Rows, each group of one variant's stage run over the experiment's seeds followed by its
    ``mean`` row: the metrics' mean and sample standard deviation over the seeds that are
    done, ``seeds done`` (n of those asked), ``done`` when all are in, else ``partial``. Split
    rows are left as they are; a stage over splits is summarised by its split means."""
    groups: dict = {}
    for row in rows:
        if row.get("seed") is not None and row.get("_group") is None:
            groups.setdefault((row["_base_variant"], row["stage"]), []).append(row)
    out = []
    for row in rows:
        out.append(row)
        group = groups.get((row.get("_base_variant"), row["stage"])) if row.get("_group") is None else None
        if group and row is group[-1]:
            out.append(seed_mean_row(group, asked))
    return out


def seed_mean_row(group: list[dict], asked: int) -> dict:
    done = [row for row in group if row["state"] == "done"]
    first = group[0]
    row = {key: value for key, value in first.items() if not key.startswith(("top1", "top5", "map", "delta_"))}
    row.update(variant=first["_base_variant"], seed="mean", seeds=f"{len(done)}/{asked}",
               state="done" if len(done) == asked else "partial",
               detail="" if len(done) == asked else f"{len(done)} of {asked} seeds done", _group=None)
    for name in METRICS:
        values = [r[name] for r in done if r.get(name) is not None]
        row[name] = statistics.fmean(values) if values else None
        row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        paper = row.get(f"paper_{name}")
        row[f"delta_{name}"] = row[name] - paper if row[name] is not None and paper is not None else None
    runs = list({id(run): run for r in group for run in r["_runs"]}.values())
    row.update(row_cost(runs), clips_per_s=None)
    return row
