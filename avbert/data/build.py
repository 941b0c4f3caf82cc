"""Data for a run, and the one place that chooses its loader: the built-in synthetic set
(``data.source: synthetic``) in a resumable rank-sharded loader, or a manifest's media read
by DALI (``avbert.data.dali_loader``) or PyAV (``avbert.data.pyav_loader``), whichever this
machine's decoders serve (``choose_loader``). DALI is imported only when it is chosen: the
synthetic and PyAV paths run without it installed."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Optional

import torch
from torch.utils.data import Dataset

from avbert.config import Config, DataConfig
from avbert.data.clips import ClipSpec
from avbert.data.resumable import ResumableLoader

logger = logging.getLogger("avbert.data")

CPU_CODECS = frozenset({"vp9", "vp8", "mjpeg"})  # DALI's CPU decoder
GPU_CODECS = CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}  # NVDEC through DALI


def dali_installed() -> bool:
    """Whether NVIDIA DALI can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no ``nvidia`` namespace at all
        return False


def gpu_count() -> int:
    """CUDA devices DALI can use (0 without DALI, a GPU or a driver)."""
    if not dali_installed():
        return 0
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return int(GetCUDADeviceCount())
    except Exception:  # no driver: DALI raises rather than answering 0
        return 0


def choose_loader(requested: str, manifest, gpus: int, dali: bool = True) -> tuple[str, str]:
    """``(loader, why)``: DALI when it is installed (``dali``) and its decoder on this machine
    reads every video codec of the manifest, else PyAV; ``requested`` (``data.loader``) can
    force either."""
    codecs = sorted(manifest.codecs)
    where = f"{gpus} GPU(s), NVDEC" if gpus else "no GPU, CPU decoder"
    unreadable = sorted(set(codecs) - (GPU_CODECS if gpus else CPU_CODECS))
    if requested == "pyav":
        return "pyav", "data.loader is 'pyav'"
    if requested == "dali":
        if not dali:
            raise ValueError("data.loader is 'dali' but NVIDIA DALI is not installed (pip install "
                             "nvidia-dali-cuda130); use loader 'pyav' or 'auto'")
        if unreadable:
            raise ValueError(f"data.loader is 'dali' but DALI ({where}) cannot decode {unreadable} in "
                             f"{manifest.path}; use loader 'pyav' or 'auto'")
        return "dali", "data.loader is 'dali'"
    if not dali:
        return "pyav", "NVIDIA DALI is not installed"
    if unreadable:
        return "pyav", f"DALI ({where}) cannot decode {unreadable}"
    return "dali", f"DALI ({where}) decodes {codecs or ['audio only']}"


def build_manifest_loader(data, rank: int = 0, world_size: int = 1, seed: int = 0, train: bool = True,
                          split: Optional[str] = None, require_audio: bool = True):
    """The loader of ``data.manifest`` (split ``split`` or ``data.split``) chosen by
    ``choose_loader``; says which in the log. ``require_audio=False`` gives silent
    audio to records without sound instead of skipping them (visual-only tasks)."""
    from avbert.data.manifest import load_manifest
    from avbert.data.pyav_loader import ManifestDataset, PyAVEvalLoader, PyAVLoader

    manifest = load_manifest(data.manifest, split or data.split)
    spec = ClipSpec.from_config(data, train=train)
    gpus = gpu_count() if torch.cuda.is_available() else 0
    name, why = choose_loader(data.loader, manifest, gpus, dali=dali_installed())
    logger.info("data: %s loader for %s (%d records): %s", name, data.manifest, len(manifest.records), why)
    if name == "dali":
        from avbert.data.dali_loader import DaliLoader

        device = int(os.environ.get("LOCAL_RANK", 0)) % gpus if gpus else None
        return DaliLoader(manifest, spec, data.batch_size, rank, world_size, seed, train, require_audio,
                          device_id=device, num_threads=max(2, data.num_workers))
    dataset = ManifestDataset(manifest, spec, train=train, seed=seed, require_audio=require_audio)
    if train:
        return PyAVLoader(dataset, data.batch_size, rank, world_size, seed, data.num_workers)
    return PyAVEvalLoader(dataset, data.batch_size, rank, world_size, data.num_workers)


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
        return build_manifest_loader(cfg.data, rank, world_size, seed=cfg.train.seed, train=True)
    dataset = build_train_dataset(cfg.data)
    pin = torch.cuda.is_available() and cfg.train.device != "cpu"  # faster host-to-GPU copies
    return ResumableLoader(dataset, cfg.data.batch_size, rank=rank, world_size=world_size, seed=cfg.train.seed,
                           num_workers=cfg.data.num_workers, pin_memory=pin)
