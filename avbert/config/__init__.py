"""Typed configuration (``schema``) and its strict loader (``loader``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from avbert.config.loader import (
    ConfigError,
    deep_merge,
    dump_yaml,
    merge_into,
    overrides_to_dict,
    read_yaml,
    to_dict,
)
from avbert.config.schema import (
    AudioCNNConfig,
    Config,
    DataConfig,
    DownstreamConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SharingConfig,
    SyntheticDataConfig,
    TrainConfig,
    TransformerConfig,
    VisualCNNConfig,
)


def config_from_dict(data: dict, source: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then ``data``, then ``key.path=value`` overrides."""
    extra = overrides_to_dict(list(overrides))
    merge_into(Config(), extra, "command line")  # attribute override errors to the command line
    return merge_into(Config(), deep_merge(data, extra), source)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults when ``path`` is None) with overrides."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(data, str(path) if path is not None else None, overrides)


__all__ = [
    "AudioCNNConfig", "Config", "ConfigError", "DataConfig", "DownstreamConfig", "ModelConfig",
    "ObjectiveConfig", "OptimConfig", "SharingConfig", "SyntheticDataConfig", "TrainConfig",
    "TransformerConfig", "VisualCNNConfig", "config_from_dict", "dump_yaml", "load_config",
    "merge_into", "read_yaml", "to_dict",
]
