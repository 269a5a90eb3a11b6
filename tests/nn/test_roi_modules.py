"""RoI pooling modules: plain wrappers, and the deformable ones with their offset branches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import (
    DeformPSRoIPool,
    DeformRoIPool,
    ModulatedDeformRoIPool,
    PSRoIAlign,
    PSRoIPool,
    RoIAlign,
    RoIPool,
    param_groups,
)
from torchdcn.ops import (
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)

ROIS = torch.tensor([[0, 8.0, 16.0, 90.0, 70.0], [1, 30.0, 4.0, 60.0, 120.0], [1, -8.0, 0, 40, 30]])
SCALE = 1 / 8  # 6 x 7 maps of a 48 x 56 image (RoIs partly off the map too)


def test_plain_modules_are_the_ops():
    """torchvision's module defaults: RoIAlign aligned=False, RoIPool max, PSRoIAlign shifted."""
    x = torch.randn(2, 3 * 4, 6, 7)
    assert torch.equal(RoIPool(2, SCALE)(x, ROIS), roi_pool(x, ROIS, 2, SCALE))
    avg = RoIPool(2, SCALE, mode="avg")(x, ROIS)
    assert torch.equal(avg, roi_pool(x, ROIS, 2, SCALE, mode="avg"))
    assert torch.equal(RoIAlign(2, SCALE, 2)(x, ROIS), roi_align(x, ROIS, 2, SCALE, 2, False))
    assert RoIAlign(2).aligned is False and PSRoIAlign(2).aligned is True
    assert torch.equal(PSRoIPool(2, SCALE)(x, ROIS), ps_roi_pool(x, ROIS, 2, SCALE))
    out = PSRoIAlign((2, 2), SCALE, 2)(x, ROIS)
    assert torch.equal(out, ps_roi_align(x, ROIS, 2, SCALE, 2, True))
    out = PSRoIAlign((2, 2), SCALE, 2, False)(x, ROIS)
    assert torch.equal(out, ps_roi_align(x, ROIS, 2, SCALE, 2, False))
    assert repr(RoIAlign(7, 1 / 16)) == (
        "RoIAlign(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=-1, aligned=False)"
    )
    assert (
        repr(RoIPool(7, 0.5, "avg")) == "RoIPool(output_size=(7, 7), spatial_scale=0.5, mode='avg')"
    )
    with pytest.raises(ValueError, match="mode must be"):
        RoIPool(7, mode="sum")


# TorchScript (tensor and list RoIs, save/load): tests/test_torchscript_io.py


@pytest.mark.parametrize("rois", [ROIS, [ROIS[:1, 1:], ROIS[1:, 1:]]], ids=["tensor", "list"])
def test_fresh_deform_roi_pool_is_roi_align(rois):
    x = torch.randn(2, 3, 6, 7)
    pool = DeformRoIPool(3, (2, 3), SCALE, sampling_ratio=2)
    assert torch.equal(pool(x, rois), roi_align(x, ROIS, (2, 3), SCALE, 2, aligned=True))


def test_fresh_modulated_deform_roi_pool_is_half_of_roi_align():
    x = torch.randn(2, 3, 6, 7)
    pool = ModulatedDeformRoIPool(3, 2, SCALE, sampling_ratio=2, hidden_channels=16)
    offset, mask = pool.predict(x, ROIS)
    assert torch.equal(offset, torch.zeros(3, 2, 2, 2))
    assert torch.equal(mask, torch.full((3, 1, 2, 2), 0.5))
    assert torch.equal(pool(x, ROIS), 0.5 * roi_align(x, ROIS, 2, SCALE, 2, aligned=True))
    first, _, _, _, last = pool.offset_fc
    assert first.weight.shape == (16, 3 * 4) and last.weight.shape == (3 * 4, 16)
    assert torch.equal(last.weight, torch.zeros_like(last.weight))
    big = ModulatedDeformRoIPool(64, 7)  # v2 sizes: 1024-wide hidden fcs, Gaussian std 0.01
    assert big.offset_fc[2].weight.shape == (1024, 1024)
    assert abs(big.offset_fc[2].weight.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_fresh_deform_ps_roi_pool_is_ps_roi_align(class_agnostic):
    x = torch.randn(2, 5 * 4, 6, 7)
    pool = DeformPSRoIPool(5, 2, SCALE, 2, class_agnostic=class_agnostic)
    pairs = 1 if class_agnostic else 5
    assert pool.conv_offset.out_channels == 2 * pairs * 4
    assert pool.predict(x, ROIS).shape == (3, 2 * pairs, 2, 2)
    assert torch.equal(pool(x, ROIS), ps_roi_align(x, ROIS, 2, SCALE, 2))
    # offsets from another feature map of the same size
    other = DeformPSRoIPool(5, 2, SCALE, 2, offset_in_channels=8)
    assert torch.equal(other(x, ROIS, torch.randn(2, 8, 6, 7)), ps_roi_align(x, ROIS, 2, SCALE, 2))


def test_param_groups_pick_up_the_offset_branches():
    model = nn.ModuleDict(
        {
            "conv": nn.Conv2d(3, 3, 1),
            "v1": DeformRoIPool(3, 2, SCALE),
            "v2": ModulatedDeformRoIPool(3, 2, SCALE, hidden_channels=8),
            "rfcn": DeformPSRoIPool(2, 2, SCALE, offset_lr_mult=0.1),
        }
    )
    groups = {g["lr_mult"]: g["params"] for g in param_groups(model, lr=0.02)}
    assert set(groups) == {1.0, 0.1, 0.01}
    assert {id(p) for p in groups[0.01]} == {id(p) for p in model["v1"].offset_fc.parameters()}
    assert {id(p) for p in groups[0.1]} == {id(p) for p in model["rfcn"].conv_offset.parameters()}
    base = {id(p) for p in groups[1.0]}
    assert {id(p) for p in model["v2"].offset_fc.parameters()} <= base  # v2: the base rate
    assert {id(p) for p in model["conv"].parameters()} <= base


def _functional(kind, pool, x, weights):
    """The module's forward written with the functional ops and the given branch weights."""
    if kind == "rfcn":
        fields = nn.functional.conv2d(x, *weights)
        offset = ps_roi_align(fields, ROIS, 2, SCALE, 2)
        return deform_ps_roi_pool(x, ROIS, offset, 2, SCALE, 2)
    feat = roi_align(x, ROIS, 2, SCALE, 2, aligned=True).flatten(1)
    if kind == "v1":
        out = nn.functional.linear(feat, *weights)
        return deform_roi_pool(x, ROIS, out.view(3, 2, 2, 2), 2, SCALE, 2)
    w1, b1, w2, b2, w3, b3 = weights
    h = nn.functional.relu(nn.functional.linear(feat, w1, b1))
    out = nn.functional.linear(nn.functional.relu(nn.functional.linear(h, w2, b2)), w3, b3)
    mask = out[:, 8:].sigmoid().view(3, 1, 2, 2)
    return deform_roi_pool(x, ROIS, out[:, :8].view(3, 2, 2, 2), 2, SCALE, 2, mask=mask)


@pytest.mark.parametrize("kind", ["v1", "v2", "rfcn"])
def test_offset_branch_gradients_equal_the_functional_ops(kind):
    """The zero-initialised branch's gradient (and the input's) equals that of the same
    computation written with the functional ops; one step moves the bins."""
    torch.manual_seed(0)
    if kind == "rfcn":
        x = torch.randn(2, 3 * 4, 6, 7)
        pool = DeformPSRoIPool(3, 2, SCALE, 2)
    else:
        x = torch.randn(2, 3, 6, 7)
        cls = DeformRoIPool if kind == "v1" else ModulatedDeformRoIPool
        pool = cls(3, 2, SCALE, 2) if kind == "v1" else cls(3, 2, SCALE, 2, hidden_channels=8)
    params = pool.offset_parameters()
    before = pool(x, ROIS).detach()
    grad = torch.randn_like(before)
    xm = x.clone().requires_grad_(True)
    pool(xm, ROIS).backward(grad)
    xf = x.clone().requires_grad_(True)
    weights = [p.detach().clone().requires_grad_(True) for p in params]
    _functional(kind, pool, xf, weights).backward(grad)
    torch.testing.assert_close(xm.grad, xf.grad, rtol=1e-5, atol=1e-6)
    for p, w in zip(params, weights):
        torch.testing.assert_close(p.grad, w.grad, rtol=1e-5, atol=1e-6)
    assert params[-1].grad.abs().max() > 1e-3  # the last (zero) layer does learn
    with torch.no_grad():
        for p in params:
            p -= 0.1 * p.grad
    assert not torch.equal(pool(x, ROIS), before)


def test_zero_rois_and_bad_input():
    x = torch.randn(2, 3, 6, 7)
    for pool in (
        DeformRoIPool(3, 2, SCALE),
        ModulatedDeformRoIPool(3, 2, SCALE, hidden_channels=8),
    ):
        assert pool(x, torch.zeros(0, 5)).shape == (0, 3, 2, 2)
        with pytest.raises(ValueError, match=r"expects input \[N, 3, H, W\], got \[2, 4, 6, 7\]"):
            pool(torch.randn(2, 4, 6, 7), ROIS)
    assert DeformPSRoIPool(3, 2, SCALE)(torch.randn(2, 12, 6, 7), []).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="in_channels must be positive"):
        DeformRoIPool(0, 7)
    with pytest.raises(ValueError, match="out_channels must be positive"):
        DeformPSRoIPool(0, 7)


def test_repr_shows_what_differs():
    assert repr(DeformRoIPool(256, 7, 1 / 16)) == (
        "DeformRoIPool(\n  256, output_size=(7, 7), spatial_scale=0.0625\n"
        "  (offset_fc): Linear(in_features=12544, out_features=98, bias=True)\n)"
    )
    text = repr(DeformPSRoIPool(21, 7, 1 / 16, 2, class_agnostic=True))
    assert (
        "21, output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, class_agnostic=True"
        in text
    )


def test_module_spatial_scale_is_checked_as_the_ops_check_it():
    """A 0-d tensor scale is taken (as the functional ops take it); inf is refused when the
    module is built, not at its first forward."""
    x = torch.randn(2, 4, 6, 7)
    module = DeformRoIPool(4, 2, torch.tensor(SCALE))
    torch.testing.assert_close(module(x, ROIS), DeformRoIPool(4, 2, SCALE)(x, ROIS))
    with pytest.raises(ValueError, match="spatial_scale must be finite"):
        DeformRoIPool(4, 2, float("inf"))
    with pytest.raises(TypeError, match="spatial_scale must be a real number"):
        DeformRoIPool(4, 2, "0.125")
