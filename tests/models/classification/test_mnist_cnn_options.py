"""The demo CNN's tuning options: which body layers are deformable, the offset lr multiplier and
the initial v2 mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchdcn.engine import OptimConfig
from torchdcn.engine.optim import build_optimizer
from torchdcn.models.classification import mnist_cnn
from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack


@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_the_last_k_body_layers_are_deformable(k):
    model = mnist_cnn("v1", width=8, deform_layers=k)
    kinds = [type(m) for m in model.body_layers()]
    assert kinds == [nn.Conv2d] * (3 - k) + [DeformConv2dPack] * k
    assert list(model.deformable_layers()) == [f"body.{i}" for i in range(3 - k, 3)]


def test_offset_lr_mult_reaches_the_optimizer():
    model = mnist_cnn("v2", width=8, offset_lr_mult=0.3)
    opt = build_optimizer(model, OptimConfig("adamw", lr=1e-3))
    offsets = {id(p) for m in model.deformable_layers().values() for p in m.offset_parameters()}
    for group in opt.param_groups:
        is_offset = {id(p) in offsets for p in group["params"]}
        assert len(is_offset) == 1
        assert group["lr"] == pytest.approx(3e-4 if is_offset.pop() else 1e-3)
    default = mnist_cnn("v2", width=8)
    assert all(m.offset_lr_mult == 0.1 for m in default.deformable_layers().values())


def test_mask_init_sets_the_initial_masks_and_leaves_offsets_zero():
    torch.manual_seed(0)
    model = mnist_cnn("v2", width=8, mask_init=0.8)
    x = torch.randn(2, 8, 6, 6)
    for layer in model.deformable_layers().values():
        offset, mask = layer.predict(x)
        assert torch.equal(offset, torch.zeros_like(offset))
        assert torch.allclose(mask, torch.full_like(mask, 0.8))
        # the layer computes mask_init times the plain conv with its weight (bias-free)
        plain = nn.functional.conv2d(x, layer.weight, padding=1)
        assert torch.allclose(layer(x), 0.8 * plain, atol=1e-5)
    assert math.isclose(
        mnist_cnn("v2", width=8).body[0].predict(x)[1].mean().item(), 0.5, abs_tol=1e-7
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"deform": "v1", "deform_layers": 0}, "deform_layers must be 1, 2 or 3, got 0"),
        ({"deform": "v1", "offset_lr_mult": -1.0}, "offset_lr_mult must be None or >= 0"),
        ({"deform": "v2", "mask_init": 1.0}, r"mask_init must be in \(0, 1\), got 1.0"),
        ({"deform": "v1", "mask_init": 0.9}, "mask_init applies to deform='v2' only"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    deform = kwargs.pop("deform")
    with pytest.raises(ValueError, match=match):
        mnist_cnn(deform, width=8, **kwargs)


def test_plain_model_ignores_deform_layers():
    model = mnist_cnn(None, width=8, deform_layers=1)
    assert all(type(m) is nn.Conv2d for m in model.body_layers())
    assert not isinstance(model.body[2], ModulatedDeformConv2dPack)
