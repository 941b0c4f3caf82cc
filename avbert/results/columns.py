"""The columns of the results tables: names, headers, formats, and the labels the tables use
for the suite's settings (``avbert.results.tables`` builds the rows)."""

from __future__ import annotations

from dataclasses import dataclass, field

XT_LABELS = {"none": "no", "all": "All", "lowrank": "Part"}
XL_LABELS = {"none": "no", "cross_layer": "yes"}
METHOD_LABELS = {"current_sequence": "Current-Sequence", "current_minibatch": "Current-MiniBatch",
                 "cans_similar": "CANS-Similar", "cans_dissimilar": "CANS-Dissimilar"}
DATASET_LABELS = {"ucf101": "UCF101", "esc50": "ESC-50", "kinetics_sounds": "Kinetics-Sounds",
                  "charades": "Charades", "synthetic": "synthetic"}
METRICS = {"top1": "top-1", "top5": "top-5", "map": "mAP"}
# The paper's names of the parts of the model a downstream row evaluates (its table (c)).
FEATURE_LABELS = {"v_cnn": "V-CNN", "a_cnn": "A-CNN", "m_cnn": "M-CNN", "v_bert": "V-BERT", "a_bert": "A-BERT",
                  "m_bert": "M-BERT", "m_context": "M-context"}
PAPER_TASKS = ("ucf101", "esc50", "kinetics_sounds", "charades")  # the downstream sets the paper reports
# The protocol of the paper's number on each set (the released configs: UCF101, Kinetics-Sounds
# fine-tuned; ESC-50 linear evaluation, SOLVER.PROTOCOL linear_eval).
PAPER_PROTOCOL = {"ucf101": "finetune", "esc50": "linear", "kinetics_sounds": "finetune", "charades": "finetune"}
TOP5_MAX_TRIVIAL = 5  # with this many classes or fewer, every prediction's top 5 holds the label


@dataclass(frozen=True)
class Column:
    """``key`` in CSV/JSON, ``header`` in Markdown and on the terminal, ``fmt``
    how a value is written: text, f1/f2/f3 (decimals), delta (signed f1)."""

    key: str
    header: str
    fmt: str = "text"


@dataclass
class Table:
    experiment: str
    title: str
    layout: str
    columns: list[Column]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)


def metric_columns(names: tuple[str, ...]) -> list[Column]:
    """Each metric, the paper's and the difference; top-1 then chance."""
    columns = []
    for name in names:
        label = METRICS[name]
        columns += [Column(name, label, "f1"), Column(f"paper_{name}", f"paper {label}", "f1"),
                    Column(f"delta_{name}", f"Δ {label}", "delta")]
        if name == "top1":
            columns.append(Column("chance_top1", "chance top-1", "f1"))
    return columns


OPTIONAL_COST_COLUMNS = ("manifest_sha256", "provenance")  # shown where some row has one


def cost_columns(hours_header: str) -> list[Column]:
    return [Column("state", "state"), Column("detail", "detail"), Column("hours", hours_header, "f3"),
            Column("clips_per_s", "clips/s", "f1"), Column("peak_mem_gb", "peak mem (GiB)", "f2"),
            Column("runs", "runs"), Column("commit", "commit"), Column("manifest_sha256", "manifest sha256"),
            Column("provenance", "provenance")]


HEAD = [Column("variant", "variant"), Column("stage", "stage"), Column("protocol", "protocol")]
LAYOUT_COLUMNS = {
    "sharing": [*HEAD, Column("xl", "XL"), Column("xt", "XT"), Column("params_m", "params (M)", "f2"),
                Column("paper_params_m", "paper params (M)", "f1"), *metric_columns(("top1", "top5"))],
    "negative_sampling": [*HEAD, Column("method", "method"), *metric_columns(("top1", "top5"))],
    "fusion": [*HEAD, Column("fusion", "fusion"), Column("params_m", "params (M)", "f2"),
               *metric_columns(("top1", "top5"))],
    "downstream": [*HEAD, Column("dataset", "dataset"), Column("feature", "feature"), Column("split", "split"),
                   Column("pretrained", "pretrained"), *metric_columns(("top1", "top5", "map")),
                   Column("views", "views")],
}
