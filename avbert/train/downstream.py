"""Downstream stages: fine-tuning and linear evaluation of a pretrained AVBERT.

``run_downstream(cfg)`` (stages ``finetune`` and ``linear``) loads the fp32
export of a pretraining run (``downstream.pretrained``; without one the model
starts from random weights, the from-scratch baseline), puts the head of the
set's feature on it (``avbert.models.heads``), trains with the same DeepSpeed
loop as pretraining (checkpoints, resume, ``metrics.jsonl``, fp32 export of
the classifier), then evaluates the export on the test split:
``test_views`` x ``test_crops`` views per video, class probabilities averaged
over a video's views, top-1/top-5 (single-label) or mAP (Charades). The
result goes to ``eval.json`` in the run directory and, as ``eval/<metric>``,
to the last line of ``metrics.jsonl``.

The stage name decides the protocol (``linear`` freezes the model). Splits:
``downstream.split`` k trains on manifest split ``train<k>`` and tests on
``test<k>`` where the manifest has numbered splits (UCF101 splits, ESC-50
folds), else on ``train`` and ``test`` (``val`` when there is no test split).
The synthetic set trains on its ``train`` split and tests on ``val``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from avbert.config import Config, config_from_dict, to_dict
from avbert.data.build import build_manifest_loader, build_train_loader, synthetic_spec
from avbert.data.manifest import load_manifest
from avbert.data.synthetic import SyntheticAVDataset
from avbert.models import AVBert, count_parameters
from avbert.models.heads import (
    MULTILABEL_TASKS,
    TASK_FEATURE,
    DownstreamClassifier,
    feature_modalities,
)
from avbert.rundir import EVAL, EvalRecord, MetricsLine, RunState, write_json
from avbert.train.checkpoint import strip_prefix
from avbert.train.classification import (
    aggregate_views,
    classification_metrics,
    first_labels,
)
from avbert.train.distributed import DistEnv, setup_distributed
from avbert.train.engine import ExportFn, TrainOutcome, run_training
from avbert.train.metrics import MetricsFile, write_status
from avbert.train.pretrain import apply_speed_switches, load_exported_model

EXPORT_FORMAT = "avbert-downstream-1"
EVAL_FILE = EVAL


# -- what is trained -------------------------------------------------------------------
def protocol_of(cfg: Config) -> str:
    """``finetune`` or ``linear``: the stage, or ``downstream.protocol`` outside a downstream stage."""
    return cfg.stage if cfg.stage in ("finetune", "linear") else cfg.downstream.protocol


def load_backbone(cfg: Config):
    """(AVBert, its model config dict): from the fp32 export, or fresh from ``cfg.model``."""
    if cfg.downstream.pretrained:
        model = load_exported_model(cfg.downstream.pretrained)
        model_config = to_dict(model.cfg)
    else:
        torch.manual_seed(cfg.train.seed)
        model, model_config = AVBert(cfg.model), to_dict(cfg.model)
    apply_speed_switches(model, cfg.train)
    return model, model_config


def feature_of(cfg: Config) -> str:
    """The feature the classifier reads: ``downstream.feature``, else the task's paper default."""
    return cfg.downstream.feature or TASK_FEATURE[cfg.downstream.task]


def build_classifier(cfg: Config, model, num_classes: int, multilabel: bool) -> DownstreamClassifier:
    torch.manual_seed(cfg.train.seed + 1)  # the head's initialisation, apart from the model's
    loss = cfg.downstream.loss if not multilabel else "cross_entropy"
    return DownstreamClassifier(model, num_classes, feature_of(cfg), protocol_of(cfg), multilabel,
                                loss=loss, margin=cfg.downstream.margin)


def classifier_export(cfg: Config, model_config: dict, classifier: DownstreamClassifier) -> ExportFn:
    """What ``export/model.pt`` holds: model and head weights in fp32 and how to rebuild them."""
    num_classes = classifier.head[-1].out_features

    def make(state_dict: dict) -> dict:
        return {"format": EXPORT_FORMAT, "model_config": model_config, "model": strip_prefix(state_dict, "model."),
                "head": strip_prefix(state_dict, "head."), "num_classes": num_classes,
                "feature": classifier.feature, "protocol": classifier.protocol,
                "multilabel": classifier.multilabel, "loss": classifier.loss, "margin": classifier.margin,
                "config": to_dict(cfg)}
    return make


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> DownstreamClassifier:
    """Rebuild a trained classifier from its ``export/model.pt`` alone."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a downstream export (format {payload.get('format')!r})")
    model_cfg = config_from_dict({"model": payload["model_config"]}, source=str(path)).model
    classifier = DownstreamClassifier(AVBert(model_cfg), payload["num_classes"], payload["feature"],
                                      payload["protocol"], payload["multilabel"],
                                      loss=payload.get("loss", "cross_entropy"), margin=payload.get("margin", 0.1))
    classifier.model.load_state_dict(payload["model"])
    classifier.head.load_state_dict(payload["head"])
    return classifier


# -- data -----------------------------------------------------------------------------
def manifest_splits(cfg: Config) -> tuple[str, str]:
    """(train split, test split) of the manifest for ``downstream.split``."""
    names = {s for r in load_manifest(cfg.data.manifest, check=False).records for s in r.splits}
    k = cfg.downstream.split
    if f"train{k}" in names and f"test{k}" in names:
        return f"train{k}", f"test{k}"
    return "train", "test" if "test" in names else "val"


def needs_audio(cfg: Config) -> bool:
    """A feature that reads no audio (UCF101's v_cnn) keeps videos without sound, given silent audio."""
    return "audio" in feature_modalities(feature_of(cfg))


def train_loader(cfg: Config, env: DistEnv):
    """The rank's resumable training batches, on the downstream training split."""
    if cfg.data.source == "manifest":
        return build_manifest_loader(cfg.data, env.rank, env.world_size, cfg.train.seed, train=True,
                                     split=manifest_splits(cfg)[0], require_audio=needs_audio(cfg))
    return build_train_loader(cfg, env.rank, env.world_size)


def dataset_classes(cfg: Config) -> tuple[int, bool]:
    """(classes, multi-label) of the configured set."""
    if cfg.data.source == "manifest":
        manifest = load_manifest(cfg.data.manifest, check=False)
        return manifest.num_classes, manifest.multilabel
    return cfg.data.synthetic.num_classes, False


class SyntheticTestViews(torch.utils.data.Dataset):
    """The synthetic ``val`` split with test views: ``[V, T, ...]`` per video.

    Videos are generated ``views - 1`` clips longer than ``data.clips``;
    temporal view ``v`` is clips ``v .. v + T - 1``. Spatial crop ``c`` of
    ``crops`` shifts the frame window along the width over a reflect-padded
    border of ``crop_size // 8`` pixels (left, centre, right for three).
    View ``v * crops + c``, as in the manifest loaders.
    """

    def __init__(self, data, views: int, crops: int):
        spec = replace(synthetic_spec(data), clips=data.clips + views - 1)
        self.videos = SyntheticAVDataset(spec, split="val")
        self.clips, self.views, self.crops = data.clips, views, crops
        self.pad = max(1, data.crop_size // 8)

    def __len__(self) -> int:
        return len(self.videos)

    def crop(self, video: torch.Tensor, c: int) -> torch.Tensor:
        if self.crops == 1:
            return video
        width = video.shape[-1]
        padded = torch.nn.functional.pad(video.flatten(0, -3), (self.pad, self.pad), mode="reflect")
        left = round(c * 2 * self.pad / (self.crops - 1))
        return padded[..., left:left + width].reshape(video.shape)

    def __getitem__(self, i: int) -> dict:
        item = self.videos[i]
        video, audio, t = item["video"], item["audio"], self.clips
        views = [(self.crop(video[v:v + t], c), audio[v:v + t]) for v in range(self.views) for c in range(self.crops)]
        return {"video": torch.stack([v for v, _ in views]), "audio": torch.stack([a for _, a in views]),
                "valid": torch.ones(len(views), t, dtype=torch.bool), "label": item["label"], "index": item["index"]}


def synthetic_eval_loader(data, rank: int, world_size: int):
    dataset = SyntheticTestViews(data, data.test_views, data.test_crops)
    positions = list(range(rank, len(dataset), world_size))
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, positions), batch_size=data.batch_size)


def eval_loader(cfg: Config, env: DistEnv):
    """This rank's share of the test split, every sample with its views stacked first."""
    if cfg.data.source == "manifest":
        return build_manifest_loader(cfg.data, env.rank, env.world_size, cfg.train.seed, train=False,
                                     split=manifest_splits(cfg)[1], require_audio=needs_audio(cfg))
    return synthetic_eval_loader(cfg.data, env.rank, env.world_size)


# -- evaluation ---------------------------------------------------------------------------
def flatten_views(batch: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A test batch with views ``[B, V, ...]`` as ``B * V`` sequences, each with its
    video's index and label."""
    valid = batch["valid"]
    views = valid.shape[1] if valid.ndim == 3 else 1
    flat = {}
    for key in ("video", "audio", "valid"):
        if key in batch:
            flat[key] = batch[key].flatten(0, 1) if valid.ndim == 3 else batch[key]
    ids = batch["index"].repeat_interleave(views)
    labels = batch["label"].repeat_interleave(views, dim=0)
    return flat, ids, labels


@torch.no_grad()
def predict(classifier: DownstreamClassifier, loader, device: torch.device, chunk: int,
            dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, video ids and labels of every view of this rank's test samples."""
    scores, ids, labels = [], [], []
    for batch in loader:
        flat, batch_ids, batch_labels = flatten_views(batch)
        for start in range(0, len(batch_ids), chunk):
            part = {k: v[start:start + chunk].to(device) for k, v in flat.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                scores.append(classifier.predict(part).float().cpu())
        ids.append(batch_ids)
        labels.append(batch_labels)
    return torch.cat(scores), torch.cat(ids), torch.cat(labels)


def gather_to_all(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensors, concatenated in rank order."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return list(tensors)
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, tuple(tensors))
    return [torch.cat([part[i] for part in parts]) for i in range(len(tensors))]


def evaluate(cfg: Config, classifier: DownstreamClassifier, env: DistEnv) -> dict:
    """Metrics of ``classifier`` on the test split, with how they were computed."""
    classifier.to(env.device).eval()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" and env.device.type == "cuda" else None
    loader = eval_loader(cfg, env)
    scores, ids, labels = gather_to_all(*predict(classifier, loader, env.device, cfg.data.batch_size, dtype))
    videos = aggregate_views(scores, ids)
    video_labels = first_labels(labels, ids, videos.ids)
    metrics = classification_metrics(videos, video_labels, classifier.multilabel)
    return {"metrics": {k: v for k, v in metrics.items() if k in ("top1", "top5", "map")},
            "videos": len(videos.ids), "views_per_video": sorted({int(v) for v in videos.views.tolist()}),
            "map_classes": metrics.get("classes")}


def eval_record(cfg: Config, classifier: DownstreamClassifier, result: dict, model_config: dict, step: int) -> dict:
    return EvalRecord(task=cfg.downstream.task, protocol=classifier.protocol, feature=classifier.feature,
                      split=cfg.downstream.split, metrics=result["metrics"], videos=result["videos"],
                      views_per_video=tuple(result["views_per_video"]), test_views=cfg.data.test_views,
                      test_crops=cfg.data.test_crops, num_classes=classifier.head[-1].out_features,
                      multilabel=classifier.multilabel, map_classes=result["map_classes"], step=step,
                      pretrained=cfg.downstream.pretrained, model_config=model_config,
                      params=count_parameters(classifier.model)).to_json()


def write_eval(run_dir: Path, record: dict, loggers=("jsonl",)) -> Path:
    """``eval.json`` (atomically) and its metrics as the last ``metrics.jsonl`` line."""
    path = run_dir / EVAL_FILE
    write_json(path, record, sort_keys=True)
    line = MetricsLine(record["step"], {f"eval/{k}": v for k, v in record["metrics"].items()}).to_json()
    metrics = MetricsFile(run_dir, enabled=True)
    metrics.open_sinks(loggers, record.get("config") or {}, resume_step=record["step"])
    metrics.write(line)
    metrics.close()
    return path


def finish_with_evaluation(cfg: Config, outcome: TrainOutcome, env: DistEnv, model_config: dict) -> None:
    """Evaluate the exported classifier on every rank; rank 0 writes the result."""
    run_dir = Path(cfg.train.run_dir)
    try:
        classifier = load_classifier(outcome.export_path)
        record = eval_record(cfg, classifier, evaluate(cfg, classifier, env), model_config, outcome.step)
    except BaseException as err:
        if env.is_main:
            write_status(run_dir, RunState.FAILED, outcome.step, outcome.total_steps,
                         error=f"evaluation: {type(err).__name__}: {err}")
        raise
    if env.is_main:
        write_eval(run_dir, record, cfg.train.loggers)
    outcome.metrics.update({f"eval/{k}": v for k, v in record["metrics"].items()})


def run_downstream(cfg: Config, should_checkpoint_and_exit: Optional[Callable[[], bool]] = None) -> TrainOutcome:
    """Fine-tune or linearly evaluate (or resume) ``cfg.train.run_dir``, then test it."""
    if cfg.downstream.task == "charades" and cfg.data.source == "synthetic":
        raise ValueError("downstream.task 'charades' needs data.source 'manifest'")
    env = setup_distributed(cfg.train.device)
    loader = train_loader(cfg, env)
    classes, multilabel = dataset_classes(cfg)
    multilabel = multilabel or cfg.downstream.task in MULTILABEL_TASKS
    model, model_config = load_backbone(cfg)
    classifier = build_classifier(cfg, model, cfg.downstream.num_classes or classes, multilabel)
    export = classifier_export(cfg, model_config, classifier)
    outcome = run_training(cfg, classifier, loader, env, export, should_checkpoint_and_exit)
    if outcome.status == RunState.COMPLETED and not evaluated_at(Path(cfg.train.run_dir), outcome.step):
        finish_with_evaluation(cfg, outcome, env, model_config)
    return outcome


def evaluated_at(run_dir: Path, step: int) -> bool:
    """Whether ``eval.json`` already holds the evaluation of ``step`` (a requeued finished job)."""
    try:
        return json.loads((run_dir / EVAL_FILE).read_text()).get("step") == step
    except (OSError, ValueError):
        return False
