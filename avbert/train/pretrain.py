"""The pretraining stage: AVBERT with MEP and CPP on the configured data.

``run_pretrain(cfg)`` builds the model and its objectives, the rank's data
loader and the DeepSpeed loop, and trains (or resumes) ``cfg.train.run_dir``.
The run ends with ``export/model.pt``: the AVBERT weights in fp32 together
with the model config, from which ``load_exported_model`` rebuilds the model
without DeepSpeed or the run's config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from avbert.config import Config, config_from_dict, to_dict
from avbert.data.build import build_train_loader
from avbert.models import AVBert
from avbert.objectives import AVBertPretrainer
from avbert.train.checkpoint import strip_prefix
from avbert.train.distributed import setup_distributed
from avbert.train.engine import ExportFn, TrainOutcome, run_training

EXPORT_FORMAT = "avbert-export-1"
MODEL_PREFIX = "model."  # AVBertPretrainer keeps the AVBert as ``.model``


def build_pretrainer(cfg: Config):
    """AVBERT wrapped with the pretraining objectives, initialised from ``train.seed``."""
    torch.manual_seed(cfg.train.seed)
    model = AVBert(cfg.model)
    apply_speed_switches(model, cfg.train)
    return AVBertPretrainer(model, cfg.objective)


def apply_speed_switches(model, train) -> None:
    """``train.activation_checkpointing`` and ``train.channels_last`` on an AVBert
    (``train.compile`` acts on the DeepSpeed engine, ``engine.initialize_engine``)."""
    model.set_gradient_checkpointing(train.activation_checkpointing)
    model.set_channels_last(train.channels_last)


def pretrain_export(cfg: Config) -> ExportFn:
    """What ``export/model.pt`` holds: AVBERT weights, the objective heads apart, the configs."""
    def make(state_dict: dict) -> dict:
        heads = {key: value for key, value in state_dict.items() if not key.startswith(MODEL_PREFIX)}
        return {"format": EXPORT_FORMAT, "model_config": to_dict(cfg.model),
                "model": strip_prefix(state_dict, MODEL_PREFIX), "pretraining_heads": heads, "config": to_dict(cfg)}
    return make


def run_pretrain(cfg: Config, should_checkpoint_and_exit: Optional[Callable[[], bool]] = None) -> TrainOutcome:
    """Pretrain (or resume) ``cfg.train.run_dir`` on this process's rank."""
    env = setup_distributed(cfg.train.device)
    loader = build_train_loader(cfg, env.rank, env.world_size)
    module = build_pretrainer(cfg)
    return run_training(cfg, module, loader, env, pretrain_export(cfg), should_checkpoint_and_exit)


def _read_export(path: str | Path, map_location: str | torch.device) -> dict:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an AVBERT export (format {payload.get('format')!r})")
    return payload


def _model_from(payload: dict, path: str | Path):
    model_cfg = config_from_dict({"model": payload["model_config"]}, source=str(path)).model
    model = AVBert(model_cfg)
    model.load_state_dict(payload["model"])
    return model


def load_exported_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the AVBERT model of an ``export/model.pt`` from the file alone."""
    return _model_from(_read_export(path, map_location), path)


def load_exported_pretrainer(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model with its pretraining heads (mask embeddings, MEP scorers, CPP
    head, sampler and draw state) from an ``export/model.pt``: what
    ``avbert.objectives.evaluation.evaluate_pretraining`` scores on held-out data."""
    payload = _read_export(path, map_location)
    cfg = config_from_dict(payload["config"], source=str(path))
    pretrainer = AVBertPretrainer(_model_from(payload, path), cfg.objective)
    pretrainer.load_state_dict({**{MODEL_PREFIX + k: v for k, v in payload["model"].items()},
                                **payload["pretraining_heads"]})
    return pretrainer
