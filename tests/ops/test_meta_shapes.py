"""Every op infers its output shape on meta tensors (no data, no autocast on that device)."""

from __future__ import annotations

import torch

from torchdcn.ops import (
    deform_conv2d,
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)


def test_meta_tensors_give_shapes():
    def meta(*shape):
        return torch.empty(*shape, device="meta")

    x, rois = meta(2, 8, 10, 12), meta(3, 5)
    assert deform_conv2d(x, meta(2, 18, 10, 12), meta(4, 8, 3, 3), padding=1).shape == (
        2,
        4,
        10,
        12,
    )
    assert roi_pool(x, rois, 2, 0.5).shape == (3, 8, 2, 2)
    assert roi_align(x, rois, (2, 3)).shape == (3, 8, 2, 3)
    assert ps_roi_pool(x, rois, 2, 0.5).shape == (3, 2, 2, 2)
    assert ps_roi_align(x, rois, 2).shape == (3, 2, 2, 2)
    offset, mask = meta(3, 2, 2, 2), meta(3, 1, 2, 2)
    assert deform_roi_pool(x, rois, offset, 2, mask=mask).shape == (3, 8, 2, 2)
    assert deform_ps_roi_pool(x, rois, offset, 2).shape == (3, 2, 2, 2)
