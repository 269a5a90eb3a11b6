"""zeroed_offsets: inside the block every deformable module computes with offsets of zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.zero_offsets import offset_modules, zeroed_offsets
from torchdcn.nn import (
    DeformConv2dPack,
    DeformPSRoIPool,
    DeformRoIPool,
    ModulatedDeformConv2dPack,
    ModulatedDeformRoIPool,
)
from torchdcn.ops import deform_conv2d


def _randomise(module: nn.Module) -> None:
    """Non-zero offset predictors (they start at zero)."""
    torch.manual_seed(1)
    for p in module.offset_parameters():
        nn.init.normal_(p, std=0.3)


def test_conv_v1_zeroed_is_plain_conv():
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 5, 3, padding=1).double()
    _randomise(layer)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    plain = nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert not torch.allclose(layer(x), plain)
    with zeroed_offsets(layer) as n:
        assert n == 1
        torch.testing.assert_close(layer(x), plain)
    assert not torch.allclose(layer(x), plain)  # restored
    assert "predict" not in vars(layer)


def test_conv_v2_keeps_the_mask():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(4, 3, 3, padding=1).double()
    _randomise(layer)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    _, mask = layer.predict(x)
    zero = torch.zeros(1, 18, 5, 5, dtype=torch.float64)
    expected = deform_conv2d(x, zero, layer.weight, layer.bias, padding=1, mask=mask)
    with zeroed_offsets(layer):
        torch.testing.assert_close(layer(x), expected)


def test_roi_pools_zeroed_equal_zero_offset_pooling():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 10, 10, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 1.0, 7.0, 8.0], [0, 0.0, 2.0, 9.0, 5.0]], dtype=torch.float64)
    v1 = DeformRoIPool(8, 2, 1.0, 2).double()
    _randomise(v1)
    fresh = DeformRoIPool(8, 2, 1.0, 2).double()  # zero offset branch
    with zeroed_offsets(v1):
        out = v1(x, rois)
    assert not torch.allclose(out, v1(x, rois))
    torch.testing.assert_close(out, fresh(x, rois))

    v2 = ModulatedDeformRoIPool(8, 2, 1.0, 2, hidden_channels=16).double()
    _randomise(v2)
    mask = v2.predict(x, rois)[1]
    with zeroed_offsets(v2):
        out = v2(x, rois)
    assert not torch.allclose(out, v2(x, rois))
    # zero offsets, learned mask: the plain bin averages scaled by the mask
    torch.testing.assert_close(out, fresh(x, rois) * mask)

    ps = DeformPSRoIPool(3, 2, 1.0, 2).double()
    _randomise(ps)
    x = torch.randn(1, 12, 10, 10, dtype=torch.float64)
    fresh = DeformPSRoIPool(3, 2, 1.0, 2).double()
    with zeroed_offsets(ps):
        out = ps(x, rois)
    assert not torch.allclose(out, ps(x, rois))
    torch.testing.assert_close(out, fresh(x, rois))


def test_whole_model_and_restore_after_error():
    model = nn.Sequential(DeformConv2dPack(2, 2, 3, padding=1), nn.ReLU(),
                          ModulatedDeformConv2dPack(2, 2, 3, padding=1))  # fmt: skip
    assert sorted(offset_modules(model)) == ["0", "2"]
    with pytest.raises(RuntimeError, match="boom"), zeroed_offsets(model) as n:
        assert n == 2
        raise RuntimeError("boom")
    assert all("predict" not in vars(m) for m in model.modules())
    with zeroed_offsets(nn.Conv2d(1, 1, 1)) as n:
        assert n == 0
