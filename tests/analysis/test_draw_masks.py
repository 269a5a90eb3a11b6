"""draw_detections with instance masks: each mask blended in its instance colour under the box
outline, binarised at 0.5, the best detection on top; bad mask shapes are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from torchdcn.analysis.draw import draw_detections, instance_color, label_color


def _blend(pixel, color, alpha):
    """The blended pixel, unrounded (the painter rounds once, after all masks)."""
    return (1 - alpha) * np.asarray(pixel, dtype=np.float64) + alpha * np.asarray(color)


def _rounded(pixel):
    return tuple(int(v) for v in np.round(pixel))


def test_masks_are_blended_per_instance_under_the_boxes():
    image = torch.full((3, 60, 60), 100, dtype=torch.uint8)
    boxes = torch.tensor([[5.0, 20.0, 30.0, 45.0], [20.0, 25.0, 55.0, 50.0]])
    masks = torch.zeros(2, 1, 60, 60)
    masks[0, 0, 26:40, 10:25] = 0.9
    masks[1, 0, 30:45, 22:50] = 0.5  # exactly the threshold: painted
    masks[1, 0, 46:47, 22:50] = 0.49  # below: not painted
    drawn = np.asarray(
        draw_detections(image, boxes, torch.tensor([1, 1]), torch.tensor([0.9, 0.8]),
                        masks=masks, mask_alpha=0.5)
    )  # fmt: skip
    gray = (100, 100, 100)
    first, second = _blend(gray, instance_color(0), 0.5), _blend(gray, instance_color(1), 0.5)
    assert instance_color(0) != instance_color(1)
    assert tuple(drawn[30, 12]) == _rounded(first)  # only the first mask
    assert tuple(drawn[43, 40]) == _rounded(second)  # only the second
    # both: the second is painted first, then the best detection over it
    assert tuple(drawn[35, 23]) == _rounded(_blend(second, instance_color(0), 0.5))
    assert tuple(drawn[46, 40]) == gray  # 0.49: outside the mask
    assert tuple(drawn[55, 2]) == gray
    # the box outlines (class colour) stay on top of the masks
    assert tuple(drawn[35, 5]) == label_color(1) and tuple(drawn[35, 21]) == label_color(1)
    assert (image == 100).all()


def test_mask_arguments_are_checked():
    image = torch.zeros(3, 10, 10, dtype=torch.uint8)
    boxes, labels = torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([1])
    with pytest.raises(ValueError, match=r"K = 1 boxes and \(H, W\) = \(10, 10\)"):
        draw_detections(image, boxes, labels, masks=torch.zeros(1, 1, 8, 10))
    with pytest.raises(ValueError, match="mask_alpha must be in"):
        draw_detections(image, boxes, labels, masks=torch.zeros(1, 10, 10), mask_alpha=2.0)
    # [K, H, W] masks and no detections work too
    out = draw_detections(image, boxes[:0], labels[:0], masks=torch.zeros(0, 10, 10))
    assert np.asarray(out).sum() == 0
