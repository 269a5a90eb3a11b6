"""Calls written for mmcv: the names and keywords that work as in mmcv, and the argument orders
that differ, which must fail with a clear message instead of building something else (an
mmcv-ordered ``DeformRoIPool(7, 256)`` used to allocate a 240 GB fc)."""

from __future__ import annotations

import pytest
import torch

from torchdcn.nn import (
    DeformConv2d,
    DeformConv2dPack,
    DeformPSRoIPool,
    DeformRoIPool,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
    ModulatedDeformRoIPool,
)
from torchdcn.ops import deform_conv2d


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
@pytest.mark.parametrize("keyword", ["offset_groups", "deform_groups", "deformable_groups"])
def test_pack_offset_group_keywords(cls, keyword):
    layer = cls(8, 4, 3, padding=1, bias=False, **{keyword: 4})
    assert layer.offset_groups == 4
    per_point = 3 if cls is ModulatedDeformConv2dPack else 2
    assert layer.conv_offset.out_channels == per_point * 4 * 9
    # the predictor's channels are split as mmcv splits them: offsets first, then mask logits
    with torch.no_grad():
        layer.conv_offset.bias.uniform_(-1.5, 1.5)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    layer = layer.double()
    pred = layer.conv_offset(x)
    if per_point == 3:
        o1, o2, m = torch.chunk(pred, 3, dim=1)
        want = deform_conv2d(x, torch.cat((o1, o2), 1), layer.weight, padding=1, mask=m.sigmoid())
    else:
        want = deform_conv2d(x, pred, layer.weight, padding=1)
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [DeformConv2d, ModulatedDeformConv2d])
def test_external_layers_take_and_check_deform_groups(cls):
    layer = cls(8, 4, 3, padding=1, deform_groups=2)
    assert layer.offset_groups == 2
    x, mask = torch.randn(1, 8, 5, 5), torch.rand(1, 18, 5, 5)
    out = layer(x, torch.randn(1, 36, 5, 5), mask)
    assert out.shape == (1, 4, 5, 5)
    with pytest.raises(ValueError, match=r"36 channels \(offset_groups=2\), got shape \[1, 18"):
        layer(x, torch.randn(1, 18, 5, 5), mask[:, :9])
    # without the keyword the groups are read from the offset, as in torchvision
    assert DeformConv2d(8, 4, 3).offset_groups == 0


def test_offset_group_keywords_must_agree():
    with pytest.raises(ValueError, match=r"different values \[2, 4\]"):
        DeformConv2dPack(8, 8, 3, offset_groups=2, deform_groups=4)
    with pytest.raises(ValueError, match=r"offset_groups=3 must divide in_channels=8"):
        ModulatedDeformConv2d(8, 8, 3, deformable_groups=3)


@pytest.mark.parametrize("cls", [DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack])
@pytest.mark.parametrize("eighth", [4, 1, "auto"])
def test_mmcv_positional_order_is_refused(cls, eighth):
    """mmcv: (in, out, k, stride, padding, dilation, groups, deform_groups, bias); here the 8th
    argument is bias, and a number or mmcv's 'auto' there is refused."""
    with pytest.raises(TypeError, match=r"8th argument is deform_groups.*by keyword"):
        cls(16, 16, 3, 1, 1, 1, 1, eighth)


# ---------------------------------------------------------------------------------------------
# Deformable RoI pooling: every way an mmcv user could write the call


@pytest.mark.parametrize(
    "call",
    [
        lambda: DeformRoIPool((7, 7), 1.0 / 16),  # mmcv DeformRoIPool(output_size, scale)
        lambda: DeformRoIPool((7, 7), 256, 1024, 1 / 16, 0, 0.1),  # mmcv Pack, tuple size
        lambda: DeformRoIPool(7, 1.0 / 16),  # mmcv DeformRoIPool with an int output size
        lambda: DeformRoIPool(output_size=7, spatial_scale=1 / 16, sampling_ratio=0, gamma=0.1),
        lambda: ModulatedDeformRoIPool((7, 7), 256, 1024, 1 / 16, 2, 0.1),
        lambda: DeformRoIPool(1 / 16, 7, 256),  # mmdetection 1.x (spatial_scale, out_size, ...)
        lambda: DeformPSRoIPool((7, 7), 1 / 16),
    ],
)
def test_mmcv_ordered_roi_pool_calls_raise_type_error(call):
    with pytest.raises(TypeError, match=r"takes \((in|out)_channels, output_size, spatial_scale"):
        call()


@pytest.mark.parametrize(
    "cls, args",
    [
        (DeformRoIPool, (7, 256)),  # mmcv DeformRoIPoolPack(output_size, output_channels): 240 GB
        (DeformRoIPool, (7, 256, 1024, 1 / 16)),
        (ModulatedDeformRoIPool, (7, 256, 1024, 1 / 16)),  # used to allocate 2.7 GB
        (DeformPSRoIPool, (7, 256)),
    ],
)
def test_mmcv_pack_order_is_refused_before_allocating(cls, args):
    with pytest.raises(ValueError, match=r"more than 64 bins per side.*not mmcv's"):
        cls(*args)


@pytest.mark.parametrize(
    "cls, args",
    [
        (DeformRoIPool, (7, 64, 1 / 16)),  # mmcv Pack: 7x7 bins of 64 channels (was 235M params)
        (DeformRoIPool, (7, 32)),
        (ModulatedDeformRoIPool, (7, 64, 1 / 16)),
        (ModulatedDeformRoIPool, (14, 32)),  # the mask pooling written in mmcv's order
    ],
)
def test_mmcv_pack_order_with_few_channels_is_refused(cls, args):
    with pytest.raises(ValueError, match=r"more bins per side than feature channels.*mmcv's"):
        cls(*args)


def test_unambiguous_small_calls_still_build():
    # bins <= 14 per side, or fewer bins than channels: the two orders cannot be told apart or
    # the call is ours; both build
    assert DeformRoIPool(7, 14).output_size == (14, 14)
    assert DeformRoIPool(64, 32).output_size == (32, 32)


def test_deform_fc_channels_is_refused_for_the_v1_module():
    with pytest.raises(TypeError, match=r"takes no deform_fc_channels.*3-layer fc"):
        DeformRoIPool(256, 7, 1 / 16, deform_fc_channels=1024)
    assert ModulatedDeformRoIPool(8, 3, deform_fc_channels=16).hidden_channels == 16


def test_offset_branch_size_cap():
    with pytest.raises(ValueError, match=r"offset branch would hold .* parameters"):
        DeformRoIPool(2**20, 7)


def test_mmcv_keywords_build_the_same_module():
    ours = ModulatedDeformRoIPool(16, 7, 1 / 16, 2, hidden_channels=32)
    theirs = ModulatedDeformRoIPool(
        output_size=7, output_channels=16, deform_fc_channels=32, spatial_scale=1 / 16,
        sampling_ratio=2,
    )  # fmt: skip
    assert repr(ours) == repr(theirs)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 16, 20, 24)
    rois = torch.tensor([[0, 16.0, 24.0, 200.0, 180.0]])
    torch.testing.assert_close(theirs(x, rois), ours(x, rois), rtol=0, atol=0)
    assert DeformRoIPool(output_channels=8, output_size=3).in_channels == 8
    with pytest.raises(ValueError, match=r"output_channels=9 .* differ"):
        DeformRoIPool(8, 3, output_channels=9)
    with pytest.raises(ValueError, match=r"deform_fc_channels=64 .* differ"):
        ModulatedDeformRoIPool(8, 3, hidden_channels=32, deform_fc_channels=64)


def test_torchdcn_order_still_works():
    pool = DeformRoIPool(256, 7, 1 / 16, 2)
    assert pool.output_size == (7, 7) and pool.in_channels == 256 and pool.sampling_ratio == 2
    assert DeformRoIPool(12, (2, 3), 0.5).output_size == (2, 3)
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        DeformRoIPool(12, 2, 0.0)
