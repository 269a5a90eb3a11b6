"""``torch.compile`` of a model built from the Pack layers (v1 and v2, grouped, strided, with
trained non-zero predictors): outputs and every gradient (input, weights, offset predictors)
match eager. ``aot_eager`` in the default suite; ``inductor`` (generates and compiles kernels)
in the slow one. (The functional op alone: tests/ops/test_deform_conv.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ModulatedDeformConv2dPack(8, 8, 3, padding=1, groups=2, offset_groups=2),
        nn.ReLU(),
        DeformConv2dPack(8, 4, 3, stride=2, padding=2, dilation=2, bias=False),
    )
    with torch.no_grad():  # sampling off the grid and masks away from 0.5
        for m in model.modules():
            if isinstance(m, DeformConv2dPack):
                m.conv_offset.weight.normal_(0, 0.1)
                m.conv_offset.bias.uniform_(-1.5, 1.5)
    return model


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_pack_model_matches_eager_forward_and_backward(backend):
    model = _model()
    params = list(model.parameters())
    x = torch.randn(2, 3, 11, 9)
    grad_out = torch.randn(2, 4, 6, 5)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    results = []
    for f in (compiled, model):
        xi = x.clone().requires_grad_(True)
        out = f(xi)
        grads = torch.autograd.grad(out, [xi, *params], grad_out)
        results.append((out, *grads))
    assert results[1][0].shape == (2, 4, 6, 5)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the offset predictors do receive gradient (the comparison above is not of zeros)
    assert results[1][-2].abs().sum() > 0  # DeformConv2dPack.conv_offset.weight
