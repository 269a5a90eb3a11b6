"""Deformable conv modules: torchvision's DeformConv2d (external offsets, no predictor: call
style, state dict, no unused parameters), the self-predicting Pack layers (fresh = nn.Conv2d,
gradients equal the functional op's), parameter groups, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
    param_groups,
)
from torchdcn.ops import deform_conv2d


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def test_torchvision_call_style_and_state_dict():
    """``layer(x, offset, mask=None)`` and a torchvision-style state dict (weight, bias only)."""
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, 3, 1, 1, 1, 2, True)  # torchvision's positional order
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    state = {"weight": torch.randn(6, 2, 3, 3), "bias": torch.randn(6)}
    layer.load_state_dict(state)  # strict
    x, offset = torch.randn(2, 4, 5, 5), torch.randn(2, 18, 5, 5)
    mask = torch.rand(2, 9, 5, 5)
    want = deform_conv2d(x, offset, state["weight"], state["bias"], padding=1)
    assert torch.equal(layer(x, offset), want)
    want = deform_conv2d(x, offset, state["weight"], state["bias"], padding=1, mask=mask)
    assert torch.equal(layer(x, offset, mask), want)
    assert torch.equal(layer(x, offset, mask=mask), want)
    no_bias = DeformConv2d(4, 6, 3, padding=1, bias=False)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    with pytest.raises(TypeError):
        layer(x)  # offsets are the caller's; DeformConv2dPack predicts its own


def test_external_offsets_leave_no_unused_parameter():
    """Every parameter of the layer gets a gradient from one step (DDP's requirement), and the
    gradients are the functional op's."""
    torch.manual_seed(1)
    layer = DeformConv2d(3, 2, 3, padding=1).double()
    x, offset = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 18, 6, 6).double()
    grad = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    layer(x, offset).backward(grad)
    w, b = _leaves(layer.weight, layer.bias)
    deform_conv2d(x, offset, w, b, padding=1).backward(grad)
    for p, want in ((layer.weight, w.grad), (layer.bias, b.grad)):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, want, rtol=0, atol=0)


def test_modulated_external_needs_mask():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 3, 3, padding=1)
    x, offset, mask = torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    expected = deform_conv2d(x, offset, layer.weight, layer.bias, padding=1, mask=mask)
    assert torch.equal(layer(x, offset, mask), expected)
    with pytest.raises(ValueError, match="needs a mask"):
        layer(x, offset)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2, "bias": False},
    ],
)
def test_fresh_pack_layers_equal_conv2d(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    v1 = DeformConv2dPack.from_conv2d(conv, offset_groups=2)
    v2 = ModulatedDeformConv2dPack.from_conv2d(conv, offset_groups=4)
    torch.testing.assert_close(v1(x), conv(x), rtol=0, atol=1e-12)
    bias = 0 if conv.bias is None else conv.bias.view(1, -1, 1, 1)
    # masks start at sigmoid(0) = 0.5: half of the convolution, plus the whole bias
    torch.testing.assert_close(v2(x), (conv(x) - bias) / 2 + bias, rtol=0, atol=1e-12)
    plain = DeformConv2d.from_conv2d(conv)
    zeros = torch.zeros(2, 2 * plain.kernel_size[0] * plain.kernel_size[1], *conv(x).shape[2:])
    torch.testing.assert_close(plain(x, zeros.double()), conv(x), rtol=0, atol=1e-12)


def test_predictors_are_zero_initialised_and_shaped():
    v1 = DeformConv2dPack(8, 4, 3, padding=1, offset_groups=2)
    v2 = ModulatedDeformConv2dPack(8, 4, (3, 5), padding=(1, 2), offset_groups=4)
    assert v1.conv_offset.out_channels == 2 * 2 * 9
    assert v2.conv_offset.out_channels == 3 * 4 * 15
    for m in (v1, v2):
        assert not m.conv_offset.weight.any() and not m.conv_offset.bias.any()
        assert m.conv_offset.stride == m.stride and m.conv_offset.padding == m.padding
    assert (v1.offset_lr_mult, v2.offset_lr_mult) == (1.0, 0.1)
    v1.reset_parameters()
    assert not v1.conv_offset.weight.any()


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_pack_gradients_equal_the_functional_op(cls):
    """float32 gradients of the layer (weight, bias, predictor, input) against the functional op
    with the predicted offsets, for a seeded non-uniform output gradient (batch 1 and 3)."""
    for n in (1, 3):
        torch.manual_seed(n)
        layer = cls(3, 2, 3, padding=1)
        with torch.no_grad():
            layer.conv_offset.weight.normal_(0, 0.3)
            layer.conv_offset.bias.normal_(0, 0.3)
        x = torch.randn(n, 3, 7, 7, requires_grad=True)
        grad = torch.randn(n, 2, 7, 7)
        layer(x).backward(grad)
        xr, w, b, ow, ob = _leaves(
            x, layer.weight, layer.bias, layer.conv_offset.weight, layer.conv_offset.bias
        )
        pred = nn.functional.conv2d(xr, ow, ob, padding=1)
        mask = pred[:, 18:].sigmoid() if cls is ModulatedDeformConv2dPack else None
        deform_conv2d(xr, pred[:, :18], w, b, padding=1, mask=mask).backward(grad)
        pairs = [(x, xr), (layer.weight, w), (layer.bias, b)]
        pairs += [(layer.conv_offset.weight, ow), (layer.conv_offset.bias, ob)]
        for got, want in pairs:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)


def test_bad_construction():
    with pytest.raises(ValueError, match="offset_groups=3"):
        DeformConv2dPack(4, 4, 3, offset_groups=3)
    with pytest.raises(ValueError, match="groups=3"):
        DeformConv2d(4, 6, 3, groups=3)
    with pytest.raises(TypeError, match=r"nn\.Conv2d"):
        DeformConv2dPack.from_conv2d(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        DeformConv2dPack.from_conv2d(nn.Conv2d(3, 3, 3, padding="same", padding_mode="reflect"))
    with pytest.raises(ValueError, match="needs stride 1"):
        DeformConv2dPack(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="'full'"):
        DeformConv2d(4, 4, 3, padding="full")


def test_repr_shows_what_differs():
    r = repr(ModulatedDeformConv2dPack(4, 8, 3, padding=1, offset_groups=2, bias=False))
    assert "padding=(1, 1)" in r and "offset_groups=2" in r and "bias=False" in r
    assert "stride" not in r.splitlines()[1] and "dilation" not in r.splitlines()[1]
    assert repr(DeformConv2d(4, 8, 3)) == "DeformConv2d(4, 8, kernel_size=(3, 3))"


# (kernel, dilation, padding, what the layer stores): 'same' with an odd total stays 'same'
STRING_PADDINGS = [
    (3, 1, "same", (1, 1)),
    (3, 2, "same", (2, 2)),
    ((5, 3), 1, "same", (2, 1)),
    (2, 1, "same", "same"),
    (4, 1, "same", "same"),
    ((3, 2), 1, "same", "same"),
    (2, 3, "same", "same"),
    (3, 1, "valid", (0, 0)),
    (2, 1, "valid", (0, 0)),
]


@pytest.mark.parametrize(("kernel", "dilation", "padding", "stored"), STRING_PADDINGS)
def test_string_padding_matches_conv2d(kernel, dilation, padding, stored):
    """``'same'``/``'valid'`` in the constructors and ``from_conv2d``: fresh Pack layers (zero
    offsets; v2 masks 0.5) compute ``nn.Conv2d``'s output with the same padding, and
    ``DeformConv2d`` with zero offsets of the output's size does too."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, kernel, padding=padding, dilation=dilation)
    x = torch.randn(2, 4, 7, 8)
    with torch.no_grad():
        ref = conv(x)
        bias = conv.bias.view(1, -1, 1, 1)
        built = DeformConv2dPack(4, 6, kernel, padding=padding, dilation=dilation)
        built.weight.copy_(conv.weight)
        built.bias.copy_(conv.bias)
        layers = [
            (built, ref),
            (DeformConv2dPack.from_conv2d(conv), ref),
            (ModulatedDeformConv2dPack.from_conv2d(conv), 0.5 * (ref - bias) + bias),
        ]
        for layer, want in layers:
            assert layer.padding == stored and layer.conv_offset.padding == stored
            out = layer(x)
            assert out.shape == want.shape
            assert (out - want).abs().max() <= 4e-6 * want.abs().max()
        external = DeformConv2d(4, 6, kernel, padding=padding, dilation=dilation)
        external.weight.copy_(conv.weight)
        external.bias.copy_(conv.bias)
        kh, kw = external.kernel_size
        out = external(x, torch.zeros(2, 2 * kh * kw, *ref.shape[2:]))
        assert (out - ref).abs().max() <= 4e-6 * ref.abs().max()
    assert f"padding={stored!r}" in repr(built) or stored == (0, 0)


@pytest.mark.parametrize(("kernel", "dilation", "padding", "stored"), STRING_PADDINGS[2:6])
def test_string_padding_scripts(kernel, dilation, padding, stored):
    """Layers built with ``'same'`` script, resolved to ints or kept as the string, and the
    scripted layer computes what the eager one does (trained, non-zero offsets)."""
    torch.manual_seed(5)
    x = torch.randn(2, 4, 7, 8)
    layer = ModulatedDeformConv2dPack(4, 3, kernel, padding=padding, dilation=dilation)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x), rtol=0, atol=0)
    external = DeformConv2d(4, 3, kernel, padding=padding, dilation=dilation)
    kh, kw = external.kernel_size
    offset = torch.randn(2, 2 * kh * kw, 7, 8)
    want = external(x, offset)
    assert want.shape == (2, 3, 7, 8)
    torch.testing.assert_close(torch.jit.script(external)(x, offset), want, rtol=0, atol=0)


@pytest.mark.parametrize("external", [True, False])
def test_torchscript(external):
    """The modules script (the ``modulated`` flag is an instance attribute) and the scripted
    module computes what the eager one does."""
    torch.manual_seed(2)
    x = torch.randn(2, 4, 6, 6)
    if external:
        layer = DeformConv2d(4, 3, 3, padding=1)
        args = (x, torch.randn(2, 18, 6, 6), torch.rand(2, 9, 6, 6))
    else:
        layer = ModulatedDeformConv2dPack(4, 3, 3, padding=1)
        with torch.no_grad():
            layer.conv_offset.weight.normal_(0, 0.2)
        args = (x,)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(*args), layer(*args), rtol=0, atol=0)


def test_param_groups_apply_every_multiplier():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        DeformConv2dPack(4, 4, 3, padding=1),
        ModulatedDeformConv2dPack(4, 4, 3, padding=1),
        ModulatedDeformConv2dPack(4, 4, 3, padding=1, offset_lr_mult=0.5),
        nn.BatchNorm2d(4),
        DeformConv2d(4, 4, 3, padding=1),
    )
    model[4].weight.requires_grad_(False)
    groups = param_groups(model, lr=0.02, weight_decay=1e-4, no_decay_norm_and_bias=True)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model[1].conv_offset.weight)] == pytest.approx(0.02)
    assert lr_of[id(model[2].conv_offset.weight)] == pytest.approx(0.002)
    assert lr_of[id(model[3].conv_offset.bias)] == pytest.approx(0.01)
    assert lr_of[id(model[2].weight)] == pytest.approx(0.02)
    assert lr_of[id(model[5].weight)] == pytest.approx(0.02)
    assert decay_of[id(model[2].weight)] == 1e-4 and decay_of[id(model[2].bias)] == 0.0
    assert id(model[4].weight) not in lr_of  # frozen parameters are left out
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    opt = torch.optim.SGD(groups, lr=0.02, momentum=0.9)
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(g["lr"] for g in groups)
