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
the items it returns; the loader removes them from the batch and keeps running
totals in ``skipped`` for the training metrics.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

SKIPPED_PREFIX = "skipped"


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
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
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
        batch = next(self._iterator)
        self.position += 1
        if isinstance(batch, dict):
            self._count_skipped(batch)
        return batch

    def _count_skipped(self, batch: dict) -> None:
        for key in [k for k in batch if k.startswith(SKIPPED_PREFIX)]:
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
