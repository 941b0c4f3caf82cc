"""Large batch tensors handed from DataLoader workers through reused shared memory.

``torch.utils.data`` moves every tensor a worker returns through a fresh shared-memory
segment: the worker creates it and faults in every page (each one zeroed by the kernel),
the training process maps it and faults every page in again, and both unmap it once the
batch is dropped. For a batch of uint8 crops (9.6 MB: two videos of four 32-frame clips
at 112 pixels) that costs about 1.2 ms of CPU per clip (BENCHMARKS.md), more than a
tenth of what decoding the clip costs.

Here each worker keeps a few segments (``Slots``) and writes every batch into one that is
free, so its pages are already in place; the training process maps each segment once
(its file descriptor travels with the first batch that uses it, then only its key) and
reads the batch where the worker wrote it. A slot becomes free again exactly when the
training process lets go of the batch: the tensor it receives is ``torch.from_numpy`` of
a numpy view of the mapping, so its storage holds the only reference to that view, and
the view's finalizer marks the slot free when the storage is released (views, slices
and reshapes of the tensor share that storage; ``pin_memory``, ``.to()`` and ``clone``
copy). A worker whose slots are all still held (a caller that keeps its batches) makes a
fresh segment as ``torch.utils.data`` does, so nothing waits and nothing is overwritten.
Segment files are unlinked as soon as they are created: nothing is left in /dev/shm,
whatever way the processes end.

Every batch taken from such a DataLoader must go through ``resumable.from_worker`` (the
suite's loaders do): a ``SlotTensor`` dropped without becoming a tensor keeps its slot
until its worker ends, and that worker falls back to fresh segments meanwhile.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

FREE, BUSY = 0, 1
HEADER = 64
"""Bytes before a slot's tensor: the flag (``FREE`` or ``BUSY``) in the first one, and
the tensor aligned as allocators align it."""
MAX_SLOTS = 3
"""Slots per worker: the DataLoader keeps at most two batches of a worker in flight
(``prefetch_factor``), and the training process holds about one more while it uses it."""


def _directory() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


@dataclass
class SlotTensor:
    """A worker's batch tensor in slot ``key`` (``(worker token, slot number)``), as it
    travels to the training process; ``fd`` (a ``resource_sharer.DupFd``) comes with
    the first batch of a slot only. ``receive`` (``from_worker``) or ``pin_memory``
    (the DataLoader's pin thread) turns it into the tensor."""

    key: tuple[str, int]
    pid: int
    size: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    fd: Any = None

    def movedim(self, source: int, destination: int) -> "SlotTensor":
        """The same memory seen as ``Tensor.movedim`` would see it."""
        view = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device="meta")
        view = view.movedim(source, destination)
        return SlotTensor(self.key, self.pid, self.size, tuple(view.shape), view.stride(), self.dtype, self.fd)

    def pin_memory(self, device=None) -> torch.Tensor:
        return receive(self).pin_memory()


class Slots:
    """The slots of one worker process."""

    def __init__(self, limit: int = MAX_SLOTS):
        self.limit = limit
        self.maps: list[mmap.mmap] = []
        self.sent: list[bool] = []
        self.fds: list[int] = []
        self.serials: list[int] = []  # with ``token``, a slot's key: never reused, even when a slot is replaced
        self.made = 0
        self.token = uuid.uuid4().hex  # not the pid: a later worker may get this one's pid

    def _create(self, size: int) -> int:
        fd, path = tempfile.mkstemp(prefix="avbert-batch-", dir=_directory())
        os.unlink(path)  # lives while a process holds it open or mapped
        os.ftruncate(fd, size)
        self.maps.append(mmap.mmap(fd, size))
        self.fds.append(fd)  # kept open: the first batch of the slot sends a duplicate
        self.sent.append(False)
        self.serials.append(self.made)
        self.made += 1
        return len(self.maps) - 1

    def take(self, nbytes: int) -> Optional[int]:
        """A free slot of at least ``nbytes``, now marked busy; None when every slot
        is held and no more may be made."""
        size = HEADER + nbytes
        for index, segment in enumerate(self.maps):
            if segment[0] == FREE and len(segment) >= size:
                segment[0] = BUSY
                return index
        free_small = [i for i, segment in enumerate(self.maps) if segment[0] == FREE]
        if len(self.maps) >= self.limit:
            if not free_small:
                return None
            index = free_small[0]  # too small for this batch: replaced by a larger one
            self.maps[index].close()
            os.close(self.fds[index])
            del self.maps[index], self.fds[index], self.sent[index], self.serials[index]
        index = self._create(size)
        self.maps[index][0] = BUSY
        return index

    def stack(self, tensors: list[torch.Tensor]) -> Optional[SlotTensor]:
        """``torch.stack(tensors)`` written into a free slot (contiguous), as it will
        travel; None when no slot is free."""
        shape = (len(tensors), *tensors[0].shape)
        dtype = tensors[0].dtype
        nbytes = int(np.prod(shape)) * tensors[0].element_size()
        index = self.take(nbytes)
        if index is None:
            return None
        out = torch.frombuffer(self.maps[index], dtype=torch.uint8, count=nbytes, offset=HEADER)
        torch.stack(tensors, out=out.view(dtype).view(shape))
        del out  # no export of the mapping outlives this call, so a slot can be closed
        key = (self.token, self.serials[index])
        fd = None
        if not self.sent[index]:
            from multiprocessing.resource_sharer import DupFd

            fd, self.sent[index] = DupFd(self.fds[index]), True
        stride = torch.empty(shape, dtype=dtype, device="meta").stride()
        return SlotTensor(key, os.getpid(), len(self.maps[index]), shape, stride, dtype, fd)


_worker_slots: tuple[int, Optional[Slots]] = (-1, None)


def worker_slots() -> Slots:
    """This process's slots (made on first use; a forked child makes its own)."""
    global _worker_slots
    if _worker_slots[0] != os.getpid():
        _worker_slots = (os.getpid(), Slots())
    return _worker_slots[1]


def stack(tensors: list[torch.Tensor]):
    """In a DataLoader worker: ``torch.stack(tensors)`` in one of the worker's slots
    (a ``SlotTensor``), or in a fresh shared-memory tensor as ``default_collate`` makes
    it when every slot is held. Elsewhere: a plain ``torch.stack``."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.stack(tensors)
    moved = worker_slots().stack(tensors)
    if moved is not None:
        return moved
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    return torch.stack(tensors, out=first.new(storage).resize_(len(tensors), *first.shape))


_mapped: dict[tuple[str, int], tuple[mmap.mmap, int]] = {}
_mapped_lock = threading.Lock()


def _release(flag: np.ndarray) -> None:
    flag[0] = FREE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mapping(moved: SlotTensor) -> mmap.mmap:
    """The training process's mapping of ``moved``'s slot, made from the file
    descriptor of its first batch. Mappings of workers that have ended are dropped
    then (a batch still in use keeps its own mapping alive): a live worker's slots stay
    mapped, since its later batches come without their descriptor."""
    with _mapped_lock:
        if moved.key in _mapped:
            return _mapped[moved.key][0]
        if moved.fd is None:
            raise RuntimeError(f"batch slot {moved.key} arrived without its file descriptor "
                               "and was never mapped here")
        for key in [key for key, (_, pid) in _mapped.items() if not _alive(pid)]:
            del _mapped[key]
        fd = moved.fd.detach()
        try:
            segment = mmap.mmap(fd, moved.size)
        finally:
            os.close(fd)
        _mapped[moved.key] = (segment, moved.pid)
        return segment


def receive(moved: SlotTensor) -> torch.Tensor:
    """The tensor of a ``SlotTensor``, read in place in its slot; the slot is free
    again once this tensor and every view of it are gone."""
    segment = _mapping(moved)
    itemsize = torch.empty((), dtype=moved.dtype).element_size()
    nbytes = int(np.prod(moved.shape)) * itemsize
    data = np.frombuffer(segment, dtype=np.uint8, count=nbytes, offset=HEADER)
    weakref.finalize(data, _release, np.frombuffer(segment, dtype=np.uint8, count=1))
    flat = torch.from_numpy(data)  # the storage holds ``data``: its end frees the slot
    del data
    return flat.view(moved.dtype).as_strided(moved.shape, moved.stride)

