"""Effective sampling locations: the regular grid without offsets, and offset / mask gradients
checked against independent references (finite differences, the closed form of a v2 layer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.effective_sampling import effective_sampling_locations
from torchdcn.nn import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
)


def test_zero_offsets_give_the_regular_grid():
    torch.manual_seed(0)
    model = nn.Sequential(DeformConv2dPack(1, 2, 3, padding=1))
    es = effective_sampling_locations(model, torch.rand(2, 1, 6, 6), "0", (2, 3))
    i, j, a, b = torch.meshgrid(*(torch.arange(n) for n in (6, 6, 3, 3)), indexing="ij")
    # order of sampling_grid: [kh, kw, H_out, W_out]
    ref = torch.stack([i - 1 + a, j - 1 + b], -1).permute(2, 3, 0, 1, 4).reshape(-1, 2).float()
    assert es.stride == 1 and torch.equal(es.cells[0], ref) and torch.equal(es.points[1], ref)
    # a node on the layer itself: only its own 9 points matter
    nonzero = es.weights[0].view(3, 3, 6, 6) > 0
    assert nonzero[:, :, 2, 3].all() and nonzero.sum() == 9


def test_offset_gradients_stay_in_the_field_of_the_node():
    torch.manual_seed(0)
    first, second = DeformConv2dPack(2, 4, 3, padding=1), DeformConv2dPack(4, 3, 3, padding=1)
    with torch.no_grad():
        first.conv_offset.weight.normal_(0, 0.05)  # non-integer offsets in the first layer
    model = nn.Sequential(first, nn.ReLU(), second)
    es = effective_sampling_locations(model, torch.rand(1, 2, 9, 9), "2", (4, 5), below="0")
    moved = es.offset_grad[0].abs().sum(0) > 0  # [9, 9] positions of the first layer
    window = torch.zeros(9, 9, dtype=torch.bool)
    window[3:6, 4:7] = True  # the second layer's zero offsets read these cells only
    assert moved[window].any() and not moved[~window].any()


def test_offset_gradient_matches_finite_differences():
    torch.manual_seed(0)
    conv = DeformConv2d(2, 3, 3, padding=1).double()
    offset = (torch.rand(1, 18, 5, 5, dtype=torch.float64) - 0.5) * 1.6

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x, offset)

    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    es = effective_sampling_locations(Fixed(), x, "conv", (2, 2), channel=1)
    eps = 1e-6
    for k in (0, 7, 13):
        plus, minus = offset.clone(), offset.clone()
        plus[0, k, 2, 2] += eps
        minus[0, k, 2, 2] -= eps
        num = (conv(x, plus) - conv(x, minus))[0, 1, 2, 2] / (2 * eps)
        assert es.offset_grad[0, k, 2, 2].item() == pytest.approx(num.item(), rel=1e-5, abs=1e-8)
    assert es.offset_grad[0, :, :2].abs().sum() == 0  # other positions do not feed the node


def test_mask_gradient_is_the_sampled_weighted_input():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(2, 3, 3, padding=1)  # fresh: offsets 0, masks 0.5
    x = torch.rand(1, 2, 6, 6)
    es = effective_sampling_locations(nn.Sequential(layer), x, "0", (3, 2))
    pad = nn.functional.pad(x, (1, 1, 1, 1))[0]
    # d (sum_o out_o) / d m_k = sum_o sum_c w[o, c, a, b] x[c, y - 1 + a, x - 1 + b]
    patch = pad[:, 3:6, 2:5]  # rows y-1..y+1, cols x-1..x+1 (+1 for the padding)
    ref = (layer.weight.detach() * patch).sum((0, 1)).flatten()
    assert torch.allclose(es.mask_grad[0, :, 3, 2], ref, atol=1e-4, rtol=1e-4)
    rest = es.mask_grad[0].clone()
    rest[:, 3, 2] = 0
    assert rest.abs().max() == 0


@pytest.mark.parametrize("logit", [0.0, 20.0, -20.0])
def test_mask_gradient_of_a_pack_layer_with_saturated_masks(logit):
    # it was the logit's gradient divided by m (1 - m): 0 where sigmoid(logit) == 1.0 in float32
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(2, 3, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.bias[18:] = logit
    x = torch.rand(1, 2, 6, 6)
    es = effective_sampling_locations(nn.Sequential(layer), x, "0", (3, 2))
    pad = nn.functional.pad(x, (1, 1, 1, 1))[0]
    ref = (layer.weight.detach() * pad[:, 3:6, 2:5]).sum((0, 1)).flatten()  # as above: no m
    assert torch.allclose(es.mask_grad[0, :, 3, 2], ref, atol=1e-4, rtol=1e-4)

    class GivenMasks(nn.Module):  # the same layer fed its masks: the mask argument's gradient
        def __init__(self):
            super().__init__()
            self.conv = ModulatedDeformConv2d(2, 3, 3, padding=1)
            self.conv.load_state_dict({"weight": layer.weight, "bias": layer.bias})

        def forward(self, x):
            o = layer.conv_offset(x)
            return self.conv(x, o[:, :18], o[:, 18:].sigmoid())

    given = effective_sampling_locations(GivenMasks(), x, "conv", (3, 2))
    assert torch.allclose(es.mask_grad, given.mask_grad, atol=1e-6)
    assert torch.equal(es.weights, given.weights)


def test_no_images_give_an_empty_result():
    # reshape(0, -1) raised "cannot reshape tensor of 0 elements"
    model = nn.Sequential(ModulatedDeformConv2dPack(2, 3, 3, padding=1))
    es = effective_sampling_locations(model, torch.rand(0, 2, 6, 6), "0")
    p = 9 * 6 * 6
    assert es.points.shape == (0, p, 2) and es.cells.shape == (0, p, 2)
    assert es.weights.shape == (0, p) and es.offset_grad.shape == (0, 18, 6, 6)
    assert es.mask_grad.shape == (0, 9, 6, 6)


def test_plain_model_is_refused_and_below_checked():
    with pytest.raises(ValueError, match="effective_sampling_locations needs a model"):
        effective_sampling_locations(nn.Conv2d(1, 1, 3), torch.rand(1, 1, 5, 5), "")
    model = nn.Sequential(DeformConv2dPack(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="below must name a deformable layer"):
        effective_sampling_locations(model, torch.rand(1, 1, 5, 5), "1", below="1")
