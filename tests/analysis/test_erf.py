"""Effective receptive fields against the theoretical receptive field of plain conv stacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.erf import effective_receptive_field, node_response


def symmetric_stack(strides=(1, 1, 1)) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for s in strides:
        conv = nn.Conv2d(1, 1, 3, stride=s, padding=1, bias=False)
        with torch.no_grad():
            w = torch.rand(3, 3) + 0.1
            w = w + w.flip(0)
            w = w + w.flip(1)
            conv.weight.copy_((w + w.t()).view(1, 1, 3, 3))  # symmetric under flips, transpose
        layers.append(conv)
    return nn.Sequential(*layers)


def test_erf_is_zero_outside_the_theoretical_field_and_symmetric():
    model = symmetric_stack()
    erf = effective_receptive_field(model, torch.rand(1, 1, 17, 17), "2", (8, 8))[0]
    inside = torch.zeros(17, 17, dtype=torch.bool)
    inside[5:12, 5:12] = True  # three 3x3 layers: +-3 pixels
    assert (erf[~inside] == 0).all() and (erf[inside] > 0).all()
    # a linear stack: the gradient is the full correlation of the kernels, symmetric as they are
    assert torch.allclose(erf, erf.flip(0), rtol=1e-5) and torch.allclose(
        erf, erf.flip(1), rtol=1e-5
    )
    assert torch.allclose(erf, erf.t(), rtol=1e-5)
    # reference: the response is linear, so the gradient is the response to a unit image
    ref = torch.zeros(17, 17)
    for y in range(5, 12):
        for x in range(5, 12):
            e = torch.zeros(1, 1, 17, 17)
            e[0, 0, y, x] = 1
            ref[y, x] = model(e)[0, 0, 8, 8]
    assert torch.allclose(erf, ref.abs(), rtol=1e-5)


def test_strided_stack_field_and_batching():
    model = symmetric_stack((2, 1))
    images = torch.rand(3, 1, 16, 16)
    erf = effective_receptive_field(model, images, "1", (3, 4))
    support = (erf[1] > 0).nonzero()
    # layer 2 reads layer-1 cells 2..4 x 3..5; layer 1 cell i reads pixels 2 i - 1 .. 2 i + 1
    assert support[:, 0].min() == 3 and support[:, 0].max() == 9
    assert support[:, 1].min() == 5 and support[:, 1].max() == 11
    one = effective_receptive_field(model, images[1:2], "1", (3, 4))
    assert torch.allclose(erf[1:2], one)


def test_channel_and_node_checks():
    feats = torch.arange(24.0).view(1, 2, 3, 4)
    assert node_response(feats, (1, 2), 1).item() == feats[0, 1, 1, 2]
    assert node_response(feats, None).item() == feats[0, 0, 1, 2] + feats[0, 1, 1, 2]
    with pytest.raises(ValueError, match="node must be"):
        node_response(feats, (3, 0))
    with pytest.raises(ValueError, match="layer must name"):
        effective_receptive_field(nn.Conv2d(1, 1, 3), torch.rand(1, 1, 5, 5), "nope")


def test_a_layer_without_a_map_is_refused():
    # class logits [N, C] have no position (y, x): it was an IndexError
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with pytest.raises(ValueError, match=r"layer '2' must output a map \[N, C, h, w\].*\[2, 5\]"):
        effective_receptive_field(model, torch.rand(2, 1, 8, 8), "2", channel=3)
    with pytest.raises(ValueError, match=r"must output a map \[N, C, h, w\]"):
        node_response(torch.rand(2, 5), None, 3)
    with pytest.raises(ValueError, match=r"channel must be in \[0, 4\), got -1"):
        effective_receptive_field(model, torch.rand(2, 1, 8, 8), "0", channel=-1)
