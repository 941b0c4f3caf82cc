"""The CPU loaders' pixel work (avbert.data.pixels): crop box, resize, mirror, layout."""

import numpy as np
import pytest
import torch

from avbert.data.clips import ClipSpec, CropPlan
from avbert.data.pixels import batch_squares, clip_layout, crop_box, crop_clips, gather_box, resize_box, stack_clips
from avbert.models.cnn import normalize_pixels

SPEC = ClipSpec(clips=2, clip_seconds=1.0, frames_per_clip=3, frame_stride=1, crop_size=16,
                short_side=(16, 20))


def _frames(count=6, height=40, width=60, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_an_unscaled_crop_is_the_source_window_in_clip_layout():
    frames = _frames()
    crop = CropPlan(height=40, width=60, top=6, left=8, flip=False)
    out = crop_clips(frames, crop, SPEC)
    assert out.shape == (2, 3, 3, 16, 16) and out.dtype == torch.uint8
    window = torch.from_numpy(frames[:, 6:22, 8:24]).reshape(2, 3, 16, 16, 3).permute(0, 4, 1, 2, 3)
    assert torch.equal(out, window)
    mirrored = crop_clips(frames, CropPlan(40, 60, 6, 8, flip=True), SPEC)
    assert torch.equal(mirrored, window.flip(-1))


def test_separate_frames_and_one_array_give_the_same_crop():
    frames = _frames()
    crop = CropPlan(height=20, width=30, top=2, left=9, flip=True)
    assert torch.equal(crop_clips(list(frames), crop, SPEC), crop_clips(frames, crop, SPEC))


def test_frames_cut_in_chunks_give_what_one_pass_gives():
    spec = ClipSpec(clips=5, clip_seconds=1.0, frames_per_clip=4, frame_stride=1, crop_size=16, short_side=(24, 30))
    frames = _frames(count=20)  # 20 = two whole CHUNKs and a part
    crop = CropPlan(height=24, width=36, top=3, left=7, flip=True)
    whole = resize_box(gather_box(frames, crop, 16), 16).flip(2).reshape(5, 4, 16, 16, 3).permute(0, 4, 1, 2, 3)
    assert torch.equal(crop_clips(frames, crop, spec), whole)
    planar = [np.ascontiguousarray(frame.transpose(2, 0, 1)) for frame in frames]  # converted per frame
    assert torch.equal(crop_clips(planar, crop, spec, convert=lambda f: f.transpose(1, 2, 0)), whole)


def test_the_box_is_where_the_crop_falls_in_the_resized_frame():
    # A 240x320 frame resized to 128x170: the 16-pixel square at (40, 100) covers
    # source rows 75..105 and columns 188..218, rounded to even pixels (whole 4:2:0 chroma blocks).
    assert crop_box(CropPlan(128, 170, 40, 100, False), 240, 320, 16) == (76, 188, 104, 218)
    # Boxes stay inside the frame (its even part) and never empty.
    assert crop_box(CropPlan(16, 16, 0, 0, False), 10, 10, 16) == (0, 0, 10, 10)
    assert crop_box(CropPlan(16, 16, 0, 0, False), 11, 9, 16) == (0, 0, 10, 8)
    assert crop_box(CropPlan(40, 60, 39, 59, False), 40, 60, 16) == (38, 58, 40, 60)
    for top, left in [(5, 7), (3, 11), (0, 1)]:
        box = crop_box(CropPlan(40, 60, top, left, False), 40, 60, 16)
        assert all(v % 2 == 0 for v in box) and abs(box[0] - top) <= 1 and abs(box[1] - left) <= 1
    frame = np.zeros((1, 240, 320, 3), np.uint8)
    frame[0, 80:100, 190:210] = 255  # a bright patch inside that box
    squares = resize_box(gather_box(frame, CropPlan(128, 170, 40, 100, False), 16), 16)[0, ..., 0].float()
    rows, cols = torch.nonzero(squares > 128, as_tuple=True)
    # Source rows 80..100 of the box 76..104 map to output rows 2.3..13.7; columns 190..210 of 188..218 to 1.1..11.7.
    assert abs(rows.float().mean() - 8.0) < 1 and abs(cols.float().mean() - 6.4) < 1


def test_the_resize_antialiases():
    """A one-pixel checkerboard scaled to 0.6 comes out flat grey (a filter without
    antialiasing keeps strong moire)."""
    y, x = np.mgrid[:200, :200]
    board = np.repeat((((y + x) % 2) * 255).astype(np.uint8)[None, ..., None], 3, axis=-1)
    out = resize_box(torch.from_numpy(board), 120).float()
    plain = torch.nn.functional.interpolate(torch.from_numpy(board).permute(0, 3, 1, 2).float(), size=(120, 120),
                                            mode="bilinear", antialias=False).permute(0, 2, 3, 1)
    assert (out - 127.5).abs().mean() < 5 and (plain - 127.5).abs().mean() > 20


def _channels_last(video: torch.Tensor) -> bool:
    return video.movedim(-4, -1).is_contiguous()


def test_crops_batch_channels_last_and_the_model_gets_the_standard_layout():
    crops = [crop_clips(_frames(seed=seed), CropPlan(20, 30, 2, 9, flip=seed % 2 == 1), SPEC) for seed in range(3)]
    batch = stack_clips(crops)
    assert batch.shape == (3, 2, 3, 3, 16, 16) and torch.equal(batch, torch.stack(crops))
    assert _channels_last(batch) and not batch.is_contiguous()
    views = stack_clips([batch, batch.flip(0)])  # a view dimension more, as in test mode
    assert torch.equal(views, torch.stack([batch, batch.flip(0)])) and _channels_last(views)
    pixels = normalize_pixels(batch)
    assert pixels.is_contiguous() and pixels.dtype == torch.float32
    assert torch.allclose(pixels, normalize_pixels(batch.contiguous()))


def test_crops_written_into_a_batch_are_the_stacked_crops_without_a_copy():
    crops = [CropPlan(20, 30, 2, 9, flip=seed % 2 == 1) for seed in range(3)]
    frames = [_frames(seed=seed) for seed in range(3)]
    squares = batch_squares(3, SPEC)
    placed = [crop_clips(f, c, SPEC, out=place) for f, c, place in zip(frames, crops, squares)]
    assert all(p.data_ptr() == place.data_ptr() for p, place in zip(placed, squares))  # written in place
    batch = clip_layout(squares, SPEC)
    assert torch.equal(batch, stack_clips([crop_clips(f, c, SPEC) for f, c in zip(frames, crops)]))
    assert _channels_last(batch) and batch.shape == (3, 2, 3, 3, 16, 16)
    views = batch_squares(2, SPEC, 3)  # rows x views, as test mode batches them
    assert clip_layout(views, SPEC).shape == (2, 3, 2, 3, 3, 16, 16)
    with pytest.raises(ValueError, match="contiguous"):
        crop_clips(frames[0], crops[0], SPEC, out=squares[:, :4])
