"""Resumable, rank-sharded, seed-deterministic training data order.

Each epoch is a permutation of the dataset drawn from ``(seed, epoch)``; the
first ``len - len % world_size`` indices are dealt round-robin to the ranks,
so every rank sees the same number of batches and no two ranks share a video.
``ResumableLoader`` turns that order into an endless stream of batches and
counts how many batches of the current epoch it has handed out: its
``state_dict`` (epoch, position) is stored in every checkpoint, and a loader
restored from it continues with exactly the batches the original would have
produced next.

A dataset may report items it had to skip (an unreadable file, a clip too
short) by adding integer fields named ``skipped`` or ``skipped/<reason>`` to
the items it returns, and short videos it padded by fields named ``padded`` and
``padded_clips``; the loader removes these counters from the batch and keeps running
totals in ``skipped`` (every counter by its name) for the training metrics.

Batches made in DataLoader worker processes (``collate``) carry their small fields
(labels, indices, masks, skip counts) inline, as numpy arrays pickled into the batch
message, and the loader turns them back into tensors (``from_worker``): every tensor a
worker hands over travels as a shared-memory file of its own and a file-descriptor
handover, which costs more than the copy of a few bytes.
"""

from __future__ import annotations

from numbers import Number
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    default_collate,
    get_worker_info,
)


SKIPPED_PREFIX = "skipped"
COUNTER_PREFIXES = (SKIPPED_PREFIX, "padded")
"""Batch fields that are data counters (``is_counter``), not model inputs."""
INLINE_BYTES = 1 << 16
"""A batch field of at most this many bytes leaves a worker inline (see ``collate``).
Each tensor handed over from a worker costs a shared-memory file there and, in the
training process, a connection to the worker's resource sharer that passes its file
descriptor: about 0.25 ms of CPU per tensor on each side (a manifest batch has 16
fields), against microseconds to pickle 64 KiB."""


def is_counter(key: str) -> bool:
    """Whether batch field ``key`` is a data counter (``skipped...``, ``padded...``)."""
    return key.startswith(COUNTER_PREFIXES)


def _inlinable(value) -> bool:
    if torch.is_tensor(value):
        return value.device.type == "cpu" and value.dtype not in (torch.bfloat16, torch.complex32)
    return isinstance(value, (Number, np.ndarray, np.generic)) and not isinstance(value, complex)


def collate(samples: list, collate_large: Callable = default_collate):
    """``default_collate`` of dict samples, except in a DataLoader worker, where every
    field whose batch fits in ``INLINE_BYTES`` is stacked as a numpy array (dtypes and
    shapes as ``default_collate`` would give them) that travels pickled in the batch
    message. ``collate_large`` batches the other fields (a dict of them); ``from_worker``
    turns the arrays into tensors on arrival."""
    if get_worker_info() is None or not samples or not isinstance(samples[0], dict):
        return collate_large(samples)
    small = {}
    for key, first in samples[0].items():
        values = [sample[key] for sample in samples]
        if all(_inlinable(value) for value in values):
            array = np.stack([np.asarray(value) for value in values])
            if array.nbytes <= INLINE_BYTES:
                small[key] = array
    large = [{key: value for key, value in sample.items() if key not in small} for sample in samples]
    batch = collate_large(large) if large[0] else {}
    return {key: small[key] if key in small else batch[key] for key in samples[0]}


def from_worker(batch):
    """A batch from ``collate``, with its inline numpy fields as tensors again."""
    if not isinstance(batch, dict):
        return batch
    return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in batch.items()}


def epoch_order(num_items: int, epoch: int, seed: int, shuffle: bool = True) -> torch.Tensor:
    """The dataset order of ``epoch``: a function of ``(seed, epoch)`` only."""
    if not shuffle:
        return torch.arange(num_items)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)


def rank_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch order; the tail that does not divide evenly is dropped."""
    usable = len(order) - len(order) % world_size
    return order[rank:usable:world_size]


class ShardSampler(Sampler[int]):
    """Indices of one rank for one epoch, starting at a given offset."""

    def __init__(self, num_items: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self) -> torch.Tensor:
        order = epoch_order(self.num_items, self.epoch, self.seed, self.shuffle)
        return rank_shard(order, self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:].tolist())

    def __len__(self) -> int:
        return max(self.num_items // self.world_size - self.start, 0)


class ResumableLoader:
    """An endless iterator of batches over epochs with a checkpointable position."""

    def __init__(self, dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, num_workers: int = 0, collate_fn: Optional[Callable] = None,
                 pin_memory: bool = False):
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = ShardSampler(len(dataset), rank, world_size, seed, shuffle)
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn or collate, pin_memory
        self.batches_per_epoch = (len(dataset) // world_size) // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(dataset)} items over {world_size} rank(s) do not fill one batch of {batch_size}")
        self.epoch, self.position = 0, 0
        self.skipped: dict[str, int] = {}
        self._iterator: Optional[Iterator] = None

    def _start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch, self.position * self.batch_size)
        # The loader's own generator seeds its workers, so the global RNG is never drawn from.
        generator = torch.Generator().manual_seed(self.sampler.seed * 1_000_003 + self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                            num_workers=self.num_workers, collate_fn=self.collate_fn,
                            pin_memory=self.pin_memory, generator=generator)
        self._iterator = iter(loader)

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> dict:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start_epoch()
        batch = from_worker(next(self._iterator))
        self.position += 1
        if isinstance(batch, dict):
            self._count_skipped(batch)
        return batch

    def _count_skipped(self, batch: dict) -> None:
        for key in [k for k in batch if is_counter(k)]:
            value = batch.pop(key)
            if torch.is_tensor(value):
                count = int(value.sum())
            else:
                count = int(sum(value)) if isinstance(value, (list, tuple)) else int(value)
            self.skipped[key] = self.skipped.get(key, 0) + count

    def state_dict(self) -> dict:
        """JSON-friendly position: the next batch is batch ``position`` of ``epoch``."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.sampler.seed,
                "world_size": self.sampler.world_size, "rank": self.sampler.rank,
                "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.sampler.world_size) != self.sampler.world_size:
            raise ValueError(f"loader state was saved with world size {state['world_size']}, "
                             f"this run has {self.sampler.world_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = {key: int(value) for key, value in state.get("skipped", {}).items()}
        self._iterator = None
