"""Training data for a run: the dataset named by ``data.source``, wrapped in a
resumable rank-sharded loader."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from avbert.config import Config, DataConfig
from avbert.data.sampler import ResumableLoader


def synthetic_spec(data: DataConfig):
    """The synthetic dataset whose clips have the shapes ``data`` asks for."""
    from avbert.data.synthetic import SyntheticSpec

    return SyntheticSpec(
        num_videos=data.synthetic.num_videos,
        num_classes=data.synthetic.num_classes,
        num_events=data.synthetic.num_events,
        clips=data.clips,
        frames_per_clip=data.frames_per_clip,
        frame_size=data.crop_size,
        fps=data.frames_per_clip / data.clip_seconds,
        sample_rate=data.sample_rate,
        n_mels=data.n_mels,
        mel_frames=data.mel_frames,
        log_mel=data.log_mel,
        seed=data.synthetic.seed,
    )


def build_train_dataset(data: DataConfig) -> Dataset:
    """The training split of the configured source."""
    if data.source == "synthetic":
        from avbert.data.synthetic import SyntheticAVDataset

        return SyntheticAVDataset(synthetic_spec(data), split=data.split)
    raise ValueError(f"data.source {data.source!r} has no training loader")


def build_train_loader(cfg: Config, rank: int, world_size: int) -> ResumableLoader:
    """Endless, resumable batches of ``data.batch_size`` for this rank."""
    if cfg.data.source == "manifest":  # DALI or PyAV, picked for this machine's decoders
        from avbert.data.dali_loader import build_manifest_loader

        return build_manifest_loader(cfg.data, rank, world_size, seed=cfg.train.seed, train=True)
    dataset = build_train_dataset(cfg.data)
    pin = torch.cuda.is_available() and cfg.train.device != "cpu"  # faster host-to-GPU copies
    return ResumableLoader(dataset, cfg.data.batch_size, rank=rank, world_size=world_size, seed=cfg.train.seed,
                           num_workers=cfg.data.num_workers, pin_memory=pin)
