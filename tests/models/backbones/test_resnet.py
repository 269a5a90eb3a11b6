"""ResNet/ResNeXt backbones: structure, presets, output strides, equivalence with the plain twin.

Structure is checked on every constructor, built on the meta device (no memory, no init cost);
forward passes run on small inputs, mostly on ResNet-18 and ResNet-50.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from torchdcn import models
from torchdcn.models import (
    DCN_V1,
    DCN_V2,
    BasicBlock,
    DeformConfig,
    ResNet,
    resnet18,
    resnet50,
)
from torchdcn.nn import DeformConv2dPack, FrozenBatchNorm2d, ModulatedDeformConv2dPack, param_groups

# name, blocks per stage, parameter count with the 1000-class head (torchvision's published
# figures; timm's for resnext101_32x4d).
ARCHS = {
    "resnet18": ((2, 2, 2, 2), 11_689_512),
    "resnet34": ((3, 4, 6, 3), 21_797_672),
    "resnet50": ((3, 4, 6, 3), 25_557_032),
    "resnet101": ((3, 4, 23, 3), 44_549_160),
    "resnet152": ((3, 8, 36, 3), 60_192_808),
    "resnext50_32x4d": ((3, 4, 6, 3), 25_028_904),
    "resnext101_32x4d": ((3, 4, 23, 3), 44_177_704),
    "resnext101_32x8d": ((3, 4, 23, 3), 88_791_336),
}


def build(name: str, **kw) -> ResNet:
    constructor: Callable[..., ResNet] = getattr(models, name)
    return constructor(**kw)


def on_meta(name: str, **kw) -> ResNet:
    with torch.device("meta"):
        return build(name, **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def deformable(model: ResNet) -> dict[str, DeformConv2dPack]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DeformConv2dPack)}


def convs_per_block(name: str) -> int:
    """3x3 convs per block: 2 in a basic block, 1 in a bottleneck."""
    return 2 if name in ("resnet18", "resnet34") else 1


@pytest.mark.parametrize("name", ARCHS)
def test_plain_parameter_count_matches_torchvision(name):
    model = on_meta(name)
    assert n_params(model) == ARCHS[name][1]
    assert model.deformable_layers() == {}


@pytest.mark.parametrize("name", ARCHS)
def test_v1_preset_makes_the_last_three_3x3_convs_of_conv5_deformable(name):
    model = on_meta(name, deform="v1")
    layers = deformable(model)
    expected = model.conv3x3_names()[5][-3:]
    assert list(layers) == expected
    assert all(type(m) is DeformConv2dPack and m.offset_groups == 1 for m in layers.values())
    assert model.output_stride == 16


@pytest.mark.parametrize("name", ARCHS)
def test_v2_preset_modulates_every_3x3_conv_of_conv3_to_conv5(name):
    model = on_meta(name, deform="v2")
    blocks = ARCHS[name][0]
    expected = convs_per_block(name) * sum(blocks[1:])
    layers = deformable(model)
    assert len(layers) == expected
    assert all(type(m) is ModulatedDeformConv2dPack for m in layers.values())
    assert not any(n.startswith("layer1.") for n in layers)
    assert model.output_stride == 16


@pytest.mark.parametrize(("name", "count"), [("resnet50", 13), ("resnet101", 30), ("resnet18", 12)])
def test_v2_layer_counts(name, count):
    # ResNet-50: 4 + 6 + 3 = 13 bottlenecks in conv3-conv5 (the v2 paper's text says 12).
    assert len(on_meta(name, deform="v2").deformable_layers()) == count


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "resnext50_32x4d"])
@pytest.mark.parametrize("deform", ["v1", "v2"])
def test_deformable_model_has_the_plain_keys_plus_offset_predictors(name, deform):
    plain = on_meta(name, output_stride=16).state_dict()
    model = on_meta(name, deform=deform)
    keys = model.state_dict()
    extra = [k for k in keys if k not in plain]
    assert [k for k in plain if k not in keys] == []
    assert all(".conv_offset." in k for k in extra)
    assert len(extra) == 2 * len(model.deformable_layers())
    for layer_name, layer in model.deformable_layers().items():
        assert keys[f"{layer_name}.weight"].shape == plain[f"{layer_name}.weight"].shape
        assert f"{layer_name}.conv_offset.weight" in keys
        if isinstance(layer, ModulatedDeformConv2dPack):
            assert layer.conv_offset.out_channels == 27
        assert layer.groups == (32 if name.startswith("resnext") else 1)


def test_torchvision_key_names():
    keys = list(on_meta("resnet50").state_dict())
    assert len(keys) == 320  # torchvision's resnet50 state dict, num_batches_tracked included
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.5.bn3.running_var",
        "layer4.2.conv3.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert "layer1.0.conv3.weight" not in on_meta("resnet18").state_dict()


def test_default_output_strides():
    assert on_meta("resnet50").output_stride == 32
    assert on_meta("resnet50", deform="v1").output_stride == 16
    assert on_meta("resnet50", deform="v2").output_stride == 16
    assert on_meta("resnet50", deform=DCN_V1).output_stride == 32
    assert on_meta("resnet50", deform="v2", output_stride=32).output_stride == 32


@pytest.mark.parametrize(
    ("output_stride", "strides", "dilations"),
    [
        (32, (4, 8, 16, 32), (1, 1, 1, 1)),
        (16, (4, 8, 16, 16), (1, 1, 1, 2)),
        (8, (4, 8, 8, 8), (1, 1, 2, 4)),
    ],
)
def test_output_stride_replaces_stride_by_dilation(output_stride, strides, dilations):
    model = resnet18(output_stride=output_stride, features_only=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert list(features) == ["conv2", "conv3", "conv4", "conv5"]
    assert [f.shape[-1] for f in features.values()] == [64 // s for s in strides]
    assert [f.shape[1] for f in features.values()] == [64, 128, 256, 512]
    assert tuple(model.feature_strides.values()) == strides
    assert tuple(model.feature_dilations.values()) == dilations
    # Every 3x3 conv of a dilated stage is dilated, its first block included (SPEC section 5).
    for stage, names in model.conv3x3_names().items():
        for name in names:
            conv = model.get_submodule(name)
            d = dilations[stage - 2]
            assert conv.dilation == (d, d) and conv.padding == (d, d)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet50_v2_feature_sizes(output_stride):
    model = resnet50(deform="v2", output_stride=output_stride, features_only=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 32))
    sizes = [f.shape[-1] for f in features.values()]
    assert sizes == [8, 4, max(2, 32 // output_stride), 32 // output_stride]
    assert [f.shape[1] for f in features.values()] == [256, 512, 1024, 2048]


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that eval-mode BN is not (nearly) the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


def test_fresh_v1_resnet50_equals_its_plain_twin():
    torch.manual_seed(0)
    model = resnet50(deform="v1")
    torch.manual_seed(0)
    twin = resnet50(deform=None, output_stride=16)
    # Same seed, same weights: the conversion happens after initialisation.
    shared = twin.state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in shared.items())
    _randomise_norms(twin)
    missing, unexpected = model.load_state_dict(twin.state_dict(), strict=False)
    assert unexpected == [] and all(".conv_offset." in k for k in missing) and len(missing) == 6
    model, twin = model.double().eval(), twin.double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out, ref = model(x), twin(x)
    assert out.shape == (1, 1000)  # the classifier works at output stride 16
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_fresh_v2_resnet50_equals_the_plain_twin_with_halved_3x3_weights():
    # A fresh modulated layer has zero offsets and masks sigmoid(0) = 0.5 (SPEC section 3), so
    # it computes conv(x, w / 2) exactly (no bias in ResNet convs). Halving by a power of two is
    # exact in floating point, so the only differences are summation order (float64 here).
    torch.manual_seed(0)
    model = resnet50(deform="v2", features_only=True)
    twin = resnet50(output_stride=16, features_only=True)
    _randomise_norms(model)
    twin.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        for name in model.deformable_layers():
            twin.get_submodule(name).weight.mul_(0.5)
    model, twin = model.double().eval(), twin.double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out, ref = model(x), twin(x)
    for key in out:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-10)


def test_resnet18_classifier_and_heads():
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert resnet18(num_classes=10).eval()(x).shape == (2, 10)
        assert resnet18(deform="v1", num_classes=7).eval()(x).shape == (2, 7)
        assert resnet18(num_classes=None).eval()(x).shape == (2, 512, 1, 1)
    assert on_meta("resnet18", num_classes=None).fc is None
    assert on_meta("resnet18", features_only=True).fc is None
    assert not any(
        k.startswith("fc.") for k in on_meta("resnet50", features_only=True).state_dict()
    )


def test_v2_param_groups_use_the_predictors_rate():
    model = on_meta("resnet18", deform="v2", num_classes=4)
    groups = {g["lr_mult"]: g for g in param_groups(model, lr=0.02)}
    predictors = [p for m in model.deformable_layers().values() for p in m.conv_offset.parameters()]
    assert len(predictors) == 2 * 12
    assert {id(p) for p in groups[0.1]["params"]} == {id(p) for p in predictors}
    assert groups[0.1]["lr"] == pytest.approx(0.002)


def test_custom_configs():
    # v1's ablation "last 6 layers" of ResNet-101 spans conv4 and conv5.
    model = on_meta("resnet101", deform=DeformConfig(stages=(4, 5), last_n=6))
    assert list(model.deformable_layers()) == [
        "layer3.20.conv2",
        "layer3.21.conv2",
        "layer3.22.conv2",
        "layer4.0.conv2",
        "layer4.1.conv2",
        "layer4.2.conv2",
    ]
    per_stage = (
        DeformConfig(stages=(4,), modulated=True, offset_lr_mult=0.5),
        DeformConfig(stages=(5,), last_n=2, offset_groups=4),
    )
    layers = on_meta("resnet50", deform=per_stage).deformable_layers()
    expected = [ModulatedDeformConv2dPack] * 6 + [DeformConv2dPack] * 2
    assert [type(m) for m in layers.values()] == expected
    assert {m.offset_lr_mult for m in list(layers.values())[:6]} == {0.5}
    assert layers["layer4.2.conv2"].conv_offset.out_channels == 2 * 4 * 9
    assert DCN_V2 == DeformConfig(stages=(5, 4, 3), modulated=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"deform": "v3"}, "'v1' or 'v2'"),
        ({"deform": DeformConfig(stages=(5,), last_n=4)}, "only 3"),
        ({"deform": (DCN_V1, DCN_V2)}, "disjoint"),
        ({"deform": [DCN_V1, "v2"]}, "DeformConfig"),
        ({"deform": DeformConfig(stages=(5,), offset_groups=3)}, "offset_groups"),
        ({"deform": True}, r"ambiguous: pass deform='v1'.*or deform='v2'"),
        ({"deform": 1}, "got int 1"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        on_meta("resnet50", **kwargs)


def test_deform_true_is_a_type_error_and_false_is_plain():
    with pytest.raises(TypeError, match="deform='v1'"):
        on_meta("resnet18", deform=True)
    model = on_meta("resnet50", deform=False)
    assert model.deformable_layers() == {} and model.output_stride == 32
    assert n_params(model) == ARCHS["resnet50"][1]


@pytest.mark.parametrize(
    "kwargs", [{"stages": (1,)}, {"stages": (5, 5)}, {"stages": ()}, {"last_n": 0}]
)
def test_invalid_configs(kwargs):
    with pytest.raises(ValueError):
        DeformConfig(**kwargs)


def test_basic_block_rejects_resnext_widths():
    with pytest.raises(ValueError, match="BasicBlock"):
        ResNet(BasicBlock, (1, 1, 1, 1), groups=32, width_per_group=4)


def test_frozen_batch_norm_backbone_has_no_norm_parameters():
    torch.manual_seed(0)
    model = resnet18(norm_layer=FrozenBatchNorm2d, features_only=True, zero_init_residual=True)
    assert n_params(model) == n_params(resnet18(features_only=True)) - 2 * 4800
    assert model.layer1[0].bn2.weight.abs().sum() == 0
