"""convert_to_deformable: any model's chosen nn.Conv2d layers become deformable, weights kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import (
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    convert_to_deformable,
    param_groups,
)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.down(self.body(torch.relu(self.stem(x))))))


def _small() -> Small:
    torch.manual_seed(0)
    model = Small().double().eval()
    model.body[1].running_mean.normal_()
    return model


def test_v1_conversion_keeps_weights_and_outputs():
    model = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out_model = convert_to_deformable(model, ["body.0", "down", "head"])
    assert out_model is model
    assert type(model.body[0]) is DeformConv2dPack and type(model.down) is DeformConv2dPack
    assert type(model.stem) is nn.Conv2d
    assert model.down.groups == 2 and model.down.stride == (2, 2)
    assert model.body[0].dilation == (2, 2) and model.body[0].bias is None
    state = model.state_dict()
    for key, value in before.items():
        assert torch.equal(state[key], value)
    assert sorted(k for k in state if k not in before) == sorted(
        f"{n}.conv_offset.{p}" for n in ("body.0", "down", "head") for p in ("weight", "bias")
    )
    assert not model.training and state["down.conv_offset.weight"].dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)


def test_v1_conversion_in_float32_is_within_rounding():
    """The docstring's bound: a converted float32 model (every conv deformable) computes its old
    output within 4e-6 of the output's largest value (a different summation order, not exact:
    measured about 2e-7), for several seeds."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = Small().eval()
        model.body[1].running_mean.normal_()
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            ref = model(x)
            convert_to_deformable(model, ["stem", "body.0", "down", "head"])
            out = model(x)
        assert (out - ref).abs().max() <= 4e-6 * ref.abs().max()


def test_string_padding_converts():
    """``nn.Conv2d(padding='same' | 'valid')`` converts (odd and even kernels) and keeps its
    output; the predictor's offsets have the output's size."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same"),
        nn.Conv2d(4, 4, 2, padding="same"),
        nn.Conv2d(4, 4, 3, padding="valid", dilation=2),
    ).double()
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        convert_to_deformable(model, ["0", "1", "2"])
        assert [m.padding for m in model] == [(1, 1), "same", (0, 0)]
        torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)
        assert model[1].conv_offset(x.new_zeros(2, 4, 9, 10)).shape == (2, 8, 9, 10)


def test_callable_selector_and_modulated_relation():
    model = _small()
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    stem = nn.Conv2d(3, 8, 3, padding=1).double()
    stem.load_state_dict(model.stem.state_dict())
    seen = []

    def select(name: str, conv: nn.Conv2d) -> bool:
        seen.append(name)
        return name == "stem"

    convert_to_deformable(model, select, modulated=True, offset_groups=3)
    assert seen == ["stem", "body.0", "down", "head"]
    layer = model.stem
    assert type(layer) is ModulatedDeformConv2dPack and layer.offset_groups == 3
    assert layer.conv_offset.out_channels == 3 * 3 * 9
    # Fresh v2: zero offsets and masks 0.5, so half the conv without its bias, plus the bias.
    with torch.no_grad():
        bias = stem.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), 0.5 * (stem(x) - bias) + bias, rtol=1e-12, atol=1e-12)
    # Offset predictors are never candidates of a later conversion.
    seen.clear()
    convert_to_deformable(model, select)
    assert "stem.conv_offset" not in seen and type(model.stem) is ModulatedDeformConv2dPack


def test_learning_rate_multiplier_reaches_param_groups():
    model = convert_to_deformable(_small(), "down", offset_lr_mult=0.25)
    groups = {g["lr_mult"]: g["params"] for g in param_groups(model, lr=1.0)}
    assert groups[0.25] == [model.down.conv_offset.weight, model.down.conv_offset.bias]


def test_shared_conv_stays_shared():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    convert_to_deformable(model, ["0"])
    assert isinstance(model[0], DeformConv2dPack) and model[0] is model[2]


@pytest.mark.parametrize(
    ("select", "error", "message"),
    [
        (["down", "nope", "body.7"], ValueError, r"\['nope', 'body.7'\]"),
        (["body.1"], ValueError, r"body.1 \(BatchNorm2d\)"),
        ([3], TypeError, "names"),
    ],
)
def test_bad_names(select, error, message):
    model = _small()
    with pytest.raises(error, match=message):
        convert_to_deformable(model, select)
    assert type(model.down) is nn.Conv2d


def test_predictor_and_unsupported_padding_are_rejected():
    model = convert_to_deformable(_small(), ["down"])
    with pytest.raises(ValueError, match="not convertible"):
        convert_to_deformable(model, ["down.conv_offset"])
    reflect = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode"):
        convert_to_deformable(reflect, ["0"])


@pytest.mark.parametrize("modulated", [False, True])
def test_frozen_conv_converts_frozen(modulated):
    model = _small().requires_grad_(False)
    model.stem.bias.requires_grad_(True)
    convert_to_deformable(model, ["stem", "body.0"], modulated=modulated)
    assert not model.stem.weight.requires_grad and model.stem.bias.requires_grad
    assert not model.body[0].weight.requires_grad
    # the new offset predictor is what trains
    assert all(p.requires_grad for p in model.stem.offset_parameters())
    model.stem.train()
    model(torch.rand(1, 3, 8, 8, dtype=torch.float64)).sum().backward()
    assert model.stem.weight.grad is None and model.stem.bias.grad is not None


class _Standardised(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


def test_conv_subclass_with_its_own_forward_is_refused():
    model = nn.Sequential(_Standardised(2, 2, 3, padding=1))
    with pytest.raises(TypeError, match=r"_Standardised, a subclass of nn\.Conv2d with its own"):
        convert_to_deformable(model, ["0"])
    assert type(model[0]) is _Standardised
    with pytest.raises(TypeError, match="its own forward"):
        DeformConv2dPack.from_conv2d(model[0])


class _Plain(nn.Conv2d):  # a subclass that computes what nn.Conv2d computes converts
    pass


def test_conv_subclass_without_its_own_forward_converts():
    model = nn.Sequential(_Plain(2, 2, 3, padding=1)).double()
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    expected = model(x)
    convert_to_deformable(model, ["0"])
    assert isinstance(model[0], DeformConv2dPack)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("style", ["parametrizations", "weight_norm", "spectral_norm", "prune"])
def test_parametrised_or_hooked_weight_is_refused(style):
    conv = nn.Conv2d(2, 2, 3, padding=1)
    if style == "parametrizations":
        conv = torch.nn.utils.parametrizations.weight_norm(conv)
    elif style == "weight_norm":
        with pytest.warns(FutureWarning):  # deprecated in torch, still used
            conv = torch.nn.utils.weight_norm(conv)
    elif style == "spectral_norm":
        conv = torch.nn.utils.spectral_norm(conv)
    else:
        from torch.nn.utils import prune

        prune.l1_unstructured(conv, "weight", amount=0.5)
    with pytest.raises(ValueError, match="parametrised or hooked weight"):
        convert_to_deformable(nn.Sequential(conv), ["0"])
