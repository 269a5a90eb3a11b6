"""FPN: output names, strides and shapes from the backbone's feature_info, and the top-down sum
checked with identity convs against a hand-written pyramid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchdcn.models import FeatureInfo, resnet18
from torchdcn.models.detection.fpn import FPN


def test_shapes_and_feature_info_from_a_backbone():
    backbone = resnet18(features_only=True, output_stride=32)
    fpn = FPN(backbone.feature_info, out_channels=16)
    x = torch.randn(1, 3, 64, 96)
    out = fpn(backbone(x))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert [(i.name, i.channels, i.stride) for i in fpn.feature_info] == [
        ("p2", 16, 4), ("p3", 16, 8), ("p4", 16, 16), ("p5", 16, 32), ("p6", 16, 64),
    ]  # fmt: skip
    for info in fpn.feature_info:
        assert out[info.name].shape == (1, 16, -(-64 // info.stride), -(-96 // info.stride))


def _identity_(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(conv.out_channels):
            conv.weight[c, c, k, k] = 1.0
        conv.bias.zero_()


def test_top_down_sum_with_identity_convs():
    infos = [FeatureInfo("c3", 2, 8), FeatureInfo("c4", 2, 16), FeatureInfo("c5", 2, 32)]
    fpn = FPN(infos, out_channels=2)
    for conv in [*fpn.lateral, *fpn.output]:
        _identity_(conv)
    g = torch.Generator().manual_seed(1)
    c3, c4, c5 = (torch.randn(1, 2, s, s, generator=g) for s in (8, 4, 2))
    out = fpn({"c3": c3, "c4": c4, "c5": c5})
    p5 = c5
    p4 = c4 + p5.repeat_interleave(2, 2).repeat_interleave(2, 3)
    p3 = c3 + p4.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(out["p5"], p5)
    torch.testing.assert_close(out["p4"], p4)
    torch.testing.assert_close(out["p3"], p3)
    torch.testing.assert_close(out["p6"], p5[:, :, ::2, ::2])
    assert list(out) == ["p3", "p4", "p5", "p6"]


def test_gradients_reach_every_input():
    infos = [FeatureInfo("a", 3, 4), FeatureInfo("b", 5, 8)]
    fpn = FPN(infos, out_channels=4, top_block=False)
    a, b = torch.randn(1, 3, 8, 8, requires_grad=True), torch.randn(1, 5, 4, 4, requires_grad=True)
    out = fpn({"a": a, "b": b})
    assert list(out) == ["p2", "p3"]
    sum(F.relu(o).sum() for o in out.values()).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_dilated_backbone_is_refused():
    backbone = resnet18(features_only=True, output_stride=16)  # conv4 and conv5 both stride 16
    with pytest.raises(ValueError, match="output_stride=32"):
        FPN(backbone.feature_info)
    with pytest.raises(TypeError, match="FeatureInfo"):
        FPN([("c3", 2, 8)])
