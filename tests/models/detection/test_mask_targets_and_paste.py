"""Mask targets (ground-truth crop to the RoI, 28 x 28) and the paste-back of predicted masks,
against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.mask_targets import crop_and_resize_masks, mask_targets
from torchdcn.models.detection.paste_masks import paste_masks_in_image


def _square(size=8, lo=2, hi=6):
    m = torch.zeros(1, size, size, dtype=torch.uint8)
    m[0, lo:hi, lo:hi] = 1
    return m


def test_crop_exactly_on_the_object_is_all_ones():
    out = crop_and_resize_masks(_square(), torch.tensor([[2.0, 2.0, 6.0, 6.0]]), torch.tensor([0]))
    assert out.shape == (1, 28, 28)
    assert torch.equal(out, torch.ones(1, 28, 28))


def test_crop_of_the_whole_image_keeps_the_bins_whose_centre_is_inside():
    # object pixels [2, 6) of an 8-pixel image, RoI = the image: cell k covers
    # [2k/7, 2(k+1)/7), inside [2, 6) exactly for k = 7..20, outside for the others
    out = crop_and_resize_masks(_square(), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([0]))
    expected = torch.zeros(28, 28)
    expected[7:21, 7:21] = 1
    assert torch.equal(out[0], expected)


def test_crop_of_a_partial_roi_and_the_matched_mask():
    # two ground truths; the RoI (4, 0, 8, 8) is matched to the second, a left-half object
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0] = 1  # must not be read
    masks[1, :, :6] = 1  # columns 0..5
    out = crop_and_resize_masks(masks, torch.tensor([[4.0, 0.0, 8.0, 8.0]]), torch.tensor([1]), 4)
    # 4 cells of 2 x 1 pixels: columns 4, 5 covered, 6, 7 not; all rows inside
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)
    assert torch.equal(out[0], expected)


def test_crop_half_covered_cells_and_fractional_roi():
    # object columns [0, 3) of a 1 x 6 strip; RoI x in [0.5, 4.5) split into 4 cells of 1 pixel:
    # covered fractions 1, 1, 0.5, 0 -> 1, 1, 1 (at least half), 0; rows: RoI y in [0, 1)
    masks = torch.zeros(1, 1, 6, dtype=torch.uint8)
    masks[0, 0, :3] = 1
    out = crop_and_resize_masks(masks, torch.tensor([[0.5, 0.0, 4.5, 1.0]]), torch.tensor([0]), 4)
    assert torch.equal(out[0], torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(4, 4))
    # shifted by 0.1: the third cell [2.6, 3.6) is 0.4 covered -> 0
    out = crop_and_resize_masks(masks, torch.tensor([[0.6, 0.0, 4.6, 1.0]]), torch.tensor([0]), 4)
    assert torch.equal(out[0], torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4))
    # an RoI reaching out of the image: the outside is background
    masks = torch.ones(1, 4, 4, dtype=torch.uint8)
    out = crop_and_resize_masks(masks, torch.tensor([[-4.0, 0.0, 4.0, 4.0]]), torch.tensor([0]), 2)
    assert torch.equal(out[0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_crop_batch_and_errors():
    m1, m2 = _square(), _square(10, 0, 5)
    out = mask_targets(
        [torch.tensor([[2.0, 2.0, 6.0, 6.0]]), torch.tensor([[0.0, 0.0, 5.0, 5.0]])],
        [m1, m2],
        [torch.tensor([0]), torch.tensor([0])],
        resolution=6,
    )
    assert torch.equal(out, torch.ones(2, 6, 6))
    empty = crop_and_resize_masks(m1, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0, 28, 28)
    with pytest.raises(ValueError, match=r"gt_index must be in 0\.\.0"):
        crop_and_resize_masks(m1, torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"masks must have shape \[G, H, W\]"):
        crop_and_resize_masks(m1[0], torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0]))


def test_paste_hand_computed_bilinear():
    # mask columns (0, 1) over the box x in [0, 4): pixel centres 0.5..3.5 map to mask
    # coordinates u = c * 2 / 4 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped -> 0, 0.25, 0.75, 1
    mask = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    out = paste_masks_in_image(mask, torch.tensor([[0.0, 1.0, 4.0, 3.0]]), (4, 5))
    expected = torch.zeros(4, 5)
    expected[1:3, :4] = torch.tensor([0.0, 0.25, 0.75, 1.0])
    assert out.shape == (1, 1, 4, 5)
    torch.testing.assert_close(out[0, 0], expected)


def test_paste_fractional_box_and_vertical_ramp():
    # box y in [1.5, 3.5): pixel rows whose centre is inside are 1 (1.5) and 2 (2.5), 3 (3.5) is
    # out; mask rows (0.2, 0.6): v = (c - 1.5) * 2 / 2 - 0.5 = -0.5 -> 0.2 and 0.5 -> 0.4
    # box x in [0.2, 2.7): centres 0.5, 1.5, 2.5 inside; the mask is constant along x
    mask = torch.tensor([[0.2, 0.2], [0.6, 0.6]])[None]
    out = paste_masks_in_image(mask, torch.tensor([[0.2, 1.5, 2.7, 3.5]]), (5, 4))[0, 0]
    expected = torch.zeros(5, 4)
    expected[1, :3] = 0.2
    expected[2, :3] = 0.4
    torch.testing.assert_close(out, expected)


def test_paste_28x28_constant_and_clipping():
    masks = torch.ones(2, 1, 28, 28)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 5.0], [-5.0, 6.0, 30.0, 40.0]])  # second one clipped
    out = paste_masks_in_image(masks, boxes, (8, 8))
    first = torch.zeros(8, 8)
    first[3:5, 2:6] = 1
    second = torch.zeros(8, 8)
    second[6:, :] = 1
    torch.testing.assert_close(out[:, 0], torch.stack([first, second]))
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (3, 4)).shape == (
        0, 1, 3, 4,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"boxes must have shape \[K, 4\] = \[2, 4\]"):
        paste_masks_in_image(masks, boxes[:1], (8, 8))


def test_crop_then_paste_round_trip():
    # a 28 x 28 target pasted back into its box reproduces the object inside the box
    masks = torch.zeros(1, 40, 40, dtype=torch.uint8)
    masks[0, 10:30, 5:33] = 1
    box = torch.tensor([[5.0, 10.0, 33.0, 30.0]])
    target = crop_and_resize_masks(masks, box, torch.tensor([0]))
    pasted = paste_masks_in_image(target, box, (40, 40))[0, 0]
    assert torch.equal(pasted >= 0.5, masks[0].bool())
