"""The optimizer takes PyTorch's fused step where it can, and that step is the per-parameter
loop's update to float rounding, offset multipliers included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.engine import OptimConfig, build_optimizer
from torchdcn.engine.optim import fused_kwargs
from torchdcn.nn import DeformConv2dPack, param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        DeformConv2dPack(3, 4, 3, padding=1, offset_lr_mult=0.1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1),
    )


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cpu_parameters_get_the_fused_step(name):
    opt = build_optimizer(_model(), OptimConfig(name, lr=0.01))
    assert all(group["fused"] for group in opt.param_groups)


def test_fused_kwargs_only_for_floating_tensors_on_fused_devices():
    w = torch.zeros(3, requires_grad=True)
    assert fused_kwargs([w]) == {"fused": True}
    assert fused_kwargs([{"params": [w]}, {"params": [torch.zeros(2)]}]) == {"fused": True}
    assert fused_kwargs([]) == {}
    assert fused_kwargs([w, torch.zeros(2, dtype=torch.int64)]) == {}
    assert fused_kwargs([torch.zeros(2, device="meta")]) == {}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_step_matches_the_loop(name):
    """Five steps with the offset predictor at its multiplier: same parameters to rounding."""
    models = [_model(), _model()]
    opts = []
    for model, fast in zip(models, (True, False)):
        groups = param_groups(model, 0.05, 1e-4)
        kwargs = {"fused": True} if fast else {"foreach": False}
        if name == "sgd":
            opts.append(torch.optim.SGD(groups, lr=0.05, momentum=0.9, **kwargs))
        else:
            opts.append(torch.optim.AdamW(groups, lr=0.05, **kwargs))
    assert any(g["lr"] != 0.05 for g in opts[0].param_groups)  # a multiplier is in play
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(2, 3, 6, 6, generator=gen)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(p, q) for p, q in zip(models[0].parameters(), _model().parameters())]
    assert all(moved)
