"""DeformConv2d / ModulatedDeformConv2d: fresh = nn.Conv2d, external offsets, conversion, lr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import DeformConv2d, ModulatedDeformConv2d, param_groups
from torchdcn.ops import deform_conv2d


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2, "bias": False},
    ],
)
def test_fresh_modules_equal_conv2d(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    v1 = DeformConv2d.from_conv2d(conv, offset_groups=2)
    v2 = ModulatedDeformConv2d.from_conv2d(conv, offset_groups=4)
    torch.testing.assert_close(v1(x), conv(x), rtol=0, atol=1e-12)
    bias = 0 if conv.bias is None else conv.bias.view(1, -1, 1, 1)
    # masks start at sigmoid(0) = 0.5: half of the convolution, plus the whole bias
    torch.testing.assert_close(v2(x), (conv(x) - bias) / 2 + bias, rtol=0, atol=1e-12)


def test_predictors_are_zero_initialised_and_shaped():
    v1 = DeformConv2d(8, 4, 3, padding=1, offset_groups=2)
    v2 = ModulatedDeformConv2d(8, 4, (3, 5), padding=(1, 2), offset_groups=4)
    assert v1.conv_offset.out_channels == 2 * 2 * 9
    assert v2.conv_offset.out_channels == 3 * 4 * 15
    for m in (v1, v2):
        assert not m.conv_offset.weight.any() and not m.conv_offset.bias.any()
        assert m.conv_offset.stride == m.stride and m.conv_offset.padding == m.padding
    assert (v1.offset_lr_mult, v2.offset_lr_mult) == (1.0, 0.1)


def test_external_offsets_and_masks_are_used():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 3, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    offset = torch.randn(1, 18, 6, 6)
    mask = torch.rand(1, 9, 6, 6)
    expected = deform_conv2d(x, offset, layer.weight, layer.bias, padding=1, mask=mask)
    torch.testing.assert_close(layer(x, offset, mask), expected)
    with pytest.raises(ValueError, match="needs a mask"):
        layer(x, offset)
    with pytest.raises(ValueError, match="takes no mask"):
        DeformConv2d(4, 3, 3, padding=1)(x, offset, mask)


def test_gradients_reach_the_predictor():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(3, 2, 3, padding=1)
    layer(torch.randn(2, 3, 7, 7)).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


def test_bad_construction():
    with pytest.raises(ValueError, match="offset_groups=3"):
        DeformConv2d(4, 4, 3, offset_groups=3)
    with pytest.raises(ValueError, match="groups=3"):
        DeformConv2d(4, 6, 3, groups=3)
    with pytest.raises(TypeError, match=r"nn\.Conv2d"):
        DeformConv2d.from_conv2d(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="padding"):
        DeformConv2d.from_conv2d(nn.Conv2d(3, 3, 3, padding="same"))


def test_repr_shows_what_differs():
    r = repr(ModulatedDeformConv2d(4, 8, 3, padding=1, offset_groups=2, bias=False))
    assert "padding=(1, 1)" in r and "offset_groups=2" in r and "bias=False" in r
    assert "stride" not in r.splitlines()[1] and "dilation" not in r.splitlines()[1]


def test_param_groups_apply_every_multiplier():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        DeformConv2d(4, 4, 3, padding=1),
        ModulatedDeformConv2d(4, 4, 3, padding=1),
        ModulatedDeformConv2d(4, 4, 3, padding=1, offset_lr_mult=0.5),
        nn.BatchNorm2d(4),
    )
    model[4].weight.requires_grad_(False)
    groups = param_groups(model, lr=0.02, weight_decay=1e-4, no_decay_norm_and_bias=True)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model[1].conv_offset.weight)] == pytest.approx(0.02)
    assert lr_of[id(model[2].conv_offset.weight)] == pytest.approx(0.002)
    assert lr_of[id(model[3].conv_offset.bias)] == pytest.approx(0.01)
    assert lr_of[id(model[2].weight)] == pytest.approx(0.02)
    assert decay_of[id(model[2].weight)] == 1e-4 and decay_of[id(model[2].bias)] == 0.0
    assert id(model[4].weight) not in lr_of  # frozen parameters are left out
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    opt = torch.optim.SGD(groups, lr=0.02, momentum=0.9)
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(g["lr"] for g in groups)
