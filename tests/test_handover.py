"""Batches handed from DataLoader workers through reused shared-memory slots
(avbert.data.handover): same data, slots reused only once released, nothing overwritten."""

import gc

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from avbert.data import handover
from avbert.data.pixels import stack_clips
from avbert.data.pyav_loader import collate, worker_context
from avbert.data.resumable import from_worker


def _clips(seed: int, count: int = 2) -> list[torch.Tensor]:
    """Crops as ``pixels.crop_clips`` lays them out: ``[T, 3, F, S, S]`` views of
    channels-last memory (96 KiB each: more than ``resumable.collate`` sends inline)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 16, 32, 32, 3), generator=generator, dtype=torch.uint8).movedim(-1, -4)
            for _ in range(count)]


def _stack(slots: handover.Slots, clips: list[torch.Tensor]):
    """``pixels.stack_clips`` into ``slots``; None when none is free."""
    return stack_clips(clips, stack=lambda inner: slots.stack(inner) or _Missing())


class _Missing:
    def movedim(self, *_):
        return None


def test_a_slot_is_read_in_place_and_freed_only_when_the_batch_is_dropped():
    slots = handover.Slots(limit=2)
    first = _stack(slots, _clips(0))
    assert isinstance(first, handover.SlotTensor) and first.fd is not None
    batch = handover.receive(first)
    assert torch.equal(batch, torch.stack(_clips(0))) and batch.movedim(-4, -1).is_contiguous()
    view = batch[1, :, 0]  # a view keeps the slot as the batch does
    del batch
    gc.collect()
    assert slots.maps[0][0] == handover.BUSY
    second = _stack(slots, _clips(1))  # the first slot is held: a second one is made
    assert slots.made == 2 and second.key != first.key
    held = handover.receive(second)
    assert _stack(slots, _clips(2)) is None  # both held, no more allowed: the caller falls back
    del view
    gc.collect()
    assert slots.maps[0][0] == handover.FREE
    third = _stack(slots, _clips(3))
    assert third.key == first.key and third.fd is None  # reused; already mapped here
    assert torch.equal(handover.receive(third), torch.stack(_clips(3)))
    assert torch.equal(held, torch.stack(_clips(1)))  # never overwritten while held


def test_a_larger_batch_replaces_a_free_slot_under_a_new_key():
    slots = handover.Slots(limit=1)
    small = _stack(slots, _clips(0, count=1))
    del small  # never received: stays busy
    assert _stack(slots, _clips(1, count=3)) is None
    slots.maps[0][0] = handover.FREE
    large = _stack(slots, _clips(1, count=3))
    assert large is not None and large.key[1] == 1 and slots.made == 2
    assert torch.equal(handover.receive(large), torch.stack(_clips(1, count=3)))


class Crops(torch.utils.data.Dataset):
    def __len__(self):
        return 48

    def __getitem__(self, index):
        return {"video": _clips(index, count=1)[0], "label": torch.tensor(index)}


def _loader(workers: int) -> DataLoader:
    return DataLoader(Crops(), batch_size=2, num_workers=workers, collate_fn=collate,
                      multiprocessing_context=worker_context() if workers else None)


def test_worker_batches_arrive_whole_whether_dropped_or_kept():
    expected = [from_worker(b) for b in _loader(0)]
    handover._mapped.clear()
    for batch, want in zip(map(from_worker, _loader(2)), expected):  # dropped as it goes
        assert torch.equal(batch["video"], want["video"]) and torch.equal(batch["label"], want["label"])
        assert batch["video"].movedim(-4, -1).is_contiguous() and not batch["video"].is_shared()
    assert 0 < len(handover._mapped) <= 2 * handover.MAX_SLOTS  # the same few slots, reused
    ended = set(handover._mapped)  # those workers have exited with their loader
    kept = list(map(from_worker, _loader(2)))  # all held: slots run out, fresh segments follow
    assert handover._mapped and not ended & set(handover._mapped)  # their mappings were dropped
    assert any(b["video"].is_shared() for b in kept) and not all(b["video"].is_shared() for b in kept)
    for batch, want in zip(kept, expected):
        assert torch.equal(batch["video"], want["video"])


class Plain(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"video": _clips(index, count=1)[0]}


def test_outside_a_worker_the_stack_is_a_plain_one():
    batch = collate([Plain()[0], Plain()[1]])
    assert torch.is_tensor(batch["video"]) and not batch["video"].is_shared()
    assert torch.equal(batch["video"], torch.stack([Plain()[0]["video"], Plain()[1]["video"]]))


def test_a_slot_that_never_arrived_is_a_clear_error():
    slots = handover.Slots()
    moved = _stack(slots, _clips(0))
    moved.fd = None
    with pytest.raises(RuntimeError, match="without its file descriptor"):
        handover.receive(handover.SlotTensor(("elsewhere", 0), moved.pid, moved.size, moved.shape, moved.stride, moved.dtype))
