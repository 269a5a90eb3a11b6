"""Deformed RoI bins (v1 Fig. 7) and effective bin weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.roi_bins import (
    bin_boxes,
    deformed_bins,
    offset_group,
    record_roi_inputs,
)
from torchdcn.nn import DeformPSRoIPool, DeformRoIPool, ModulatedDeformRoIPool
from torchdcn.ops import deform_roi_pool


def test_regular_bins_partition_the_roi_and_offsets_move_them():
    rois = torch.tensor([[0.0, 0.0, 8.0, 4.0]])
    regular, deformed = bin_boxes(rois, None, (2, 2), spatial_scale=0.5)
    want = [[[0, 0, 4, 2], [4, 0, 8, 2]], [[0, 2, 4, 4], [4, 2, 8, 4]]]
    assert torch.allclose(regular[0], torch.tensor(want, dtype=torch.float32))
    assert torch.equal(regular, deformed)
    offset = torch.zeros(1, 2, 2, 2)
    offset[0, 0, 1, 0] = 1.0  # bin (1, 0) right by gamma * roi_w = 0.1 * 8 pixels
    offset[0, 1, 0, 1] = -2.0  # bin (0, 1) up by 2 * 0.1 * roi_h = 0.8 pixels
    _, moved = bin_boxes(rois, offset, (2, 2), 0.5)
    shift = moved - regular
    assert torch.allclose(shift[0, 1, 0], torch.tensor([0.8, 0, 0.8, 0]))
    assert torch.allclose(shift[0, 0, 1], torch.tensor([0, -0.8, 0, -0.8]))
    assert shift[0, 0, 0].abs().max() == 0 and shift[0, 1, 1].abs().max() == 0


def test_module_bins_and_effective_weights():
    torch.manual_seed(0)
    pool = DeformRoIPool(3, 2, spatial_scale=0.25, sampling_ratio=2).double()
    with torch.no_grad():
        pool.offset_fc.bias.uniform_(-1, 1)
    feats = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    box = torch.tensor([[4.0, 6.0, 30.0, 34.0]], dtype=torch.float64)
    bins = deformed_bins(pool, feats, box, score_fn=lambda p: p[:, 1].sum((1, 2)))
    rois = torch.cat([torch.zeros(1, 1, dtype=torch.float64), box], 1)
    offset, _ = pool.predict(feats, rois)
    _, want = bin_boxes(box, offset, (2, 2), 0.25)
    assert torch.allclose(bins.deformed, want.float()) and bins.mask is None
    # effective weight of bin (1, 0): |d score / d offset| by central differences
    eps, grad = 1e-6, []
    for c in (0, 1):
        plus, minus = offset.clone(), offset.clone()
        plus[0, c, 1, 0] += eps
        minus[0, c, 1, 0] -= eps
        diff = deform_roi_pool(feats, rois, plus, 2, 0.25, 2) - deform_roi_pool(
            feats, rois, minus, 2, 0.25, 2
        )
        grad.append(diff[0, 1].sum().item() / (2 * eps))
    assert bins.weights[0, 1, 0].item() == pytest.approx(torch.tensor(grad).norm().item(), rel=1e-4)


def test_modulated_and_position_sensitive_modules():
    feats = torch.rand(1, 4, 8, 8)
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    bins = deformed_bins(ModulatedDeformRoIPool(4, 2, 0.5), feats, box)
    assert torch.equal(bins.deformed, bins.regular) and torch.allclose(
        bins.mask, torch.full((1, 2, 2), 0.5)
    )
    ps = DeformPSRoIPool(1, 2, 0.5)
    with torch.no_grad():
        ps.conv_offset.bias.fill_(1.0)
    bins = deformed_bins(ps, feats, box)
    assert torch.allclose(bins.deformed - bins.regular, torch.tensor([1.6, 1.6, 1.6, 1.6]))


class KeywordFeatureHead(nn.Module):
    """Calls its pooling as R-FCN's head does: ``pool(maps, boxes, feature=x)``."""

    def __init__(self, classes: int, k: int, in_channels: int) -> None:
        super().__init__()
        self.maps = nn.Conv2d(in_channels, classes * k * k, 1)
        self.pool = DeformPSRoIPool(classes, k, 0.5, offset_in_channels=in_channels)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.pool(self.maps(x), [boxes], feature=x)


def test_bins_of_a_pooling_called_with_the_offset_feature_as_keyword():
    torch.manual_seed(0)
    classes, k, cin = 3, 2, 5
    head = KeywordFeatureHead(classes, k, cin).eval()
    with torch.no_grad():
        head.pool.conv_offset.weight.normal_(0, 0.3)
        head.pool.conv_offset.bias.uniform_(-0.5, 0.5)
    # a feature constant over space: every bin's offset is the 1x1 conv of that vector
    level = torch.rand(cin)
    x = level[None, :, None, None].expand(1, cin, 8, 8).contiguous()
    box = torch.tensor([[2.0, 3.0, 12.0, 11.0]])
    with torch.no_grad(), record_roi_inputs(head) as rec:
        head(x, box)
    call = rec["pool"]
    assert torch.equal(call.feature, x) and call.kwargs.keys() == {"feature"}
    assert call.features.shape == (1, classes * k * k, 8, 8) and torch.equal(call[1][0], box)
    w = head.pool.conv_offset.weight.detach()[:, :, 0, 0]
    fields = (w @ level + head.pool.conv_offset.bias.detach()).reshape(1, 2 * classes, k, k)
    for label in range(classes):
        assert offset_group(head.pool, label) == label
        bins = deformed_bins(head.pool, call.features, box, group=label, feature=call.feature)
        regular, want = bin_boxes(box, fields, (k, k), 0.5, group=label)
        assert torch.allclose(bins.regular, regular)
        assert torch.allclose(bins.deformed, want, atol=1e-5)
    # the classes' offsets differ, so the label's group matters
    assert not torch.allclose(
        bin_boxes(box, fields, (k, k), 0.5, group=2)[1], bin_boxes(box, fields, (k, k), 0.5)[1]
    )
    with pytest.raises(ValueError, match="feature is required"):
        deformed_bins(head.pool, call.features, box)


def test_offset_group_of_shared_and_class_specific_offsets():
    assert offset_group(DeformPSRoIPool(4, 2, class_agnostic=True), 3) == 0
    assert offset_group(DeformPSRoIPool(4, 2), 3) == 3
    assert offset_group(DeformRoIPool(4, 2), 3) == 0
    with pytest.raises(ValueError, match="channel must be in"):
        offset_group(DeformPSRoIPool(4, 2), 4)


def test_models_without_deformable_pooling_are_refused():
    with pytest.raises(ValueError, match="need a model with deformable RoI pooling"):
        with record_roi_inputs(nn.Conv2d(1, 1, 1)):
            pass
    with pytest.raises(TypeError, match="deformable RoI pooling module"):
        deformed_bins(nn.Conv2d(1, 1, 1), torch.rand(1, 1, 4, 4), torch.zeros(1, 4))


def test_rois_with_a_batch_index_are_refused_not_reshaped():
    rois = torch.tensor([[0.0, 0.0, 0.0, 8.0, 4.0]] * 4)  # [K, 5]: read as 5 garbage boxes before
    with pytest.raises(ValueError, match=r"rois must be a Tensor\[M, 4\].*\[4, 5\].*batch index"):
        bin_boxes(rois, None, (2, 2), spatial_scale=0.5)
    with pytest.raises(ValueError, match=r"rois must be a Tensor\[M, 4\].*\[3, 5\]"):
        bin_boxes(rois[:3], None, (2, 2), spatial_scale=0.5)
    pool = DeformRoIPool(1, 2, spatial_scale=0.5)
    with pytest.raises(ValueError, match=r"boxes must be a Tensor\[M, 4\].*\[4, 5\]"):
        deformed_bins(pool, torch.rand(1, 1, 8, 8), rois)
    assert deformed_bins(pool, torch.rand(1, 1, 8, 8), rois[:, 1:]).regular.shape == (4, 2, 2, 4)
