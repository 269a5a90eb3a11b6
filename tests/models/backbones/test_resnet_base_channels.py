"""``base_channels``: narrower ResNets (stages ``B * (1, 2, 4, 8)``) for training from scratch.

Every tensor of a base-16 network is its base-64 twin's (which matches torchvision's counts, see
``test_resnet.py``) with each channel dimension divided by 4, only the image's 3 input channels
kept; deformable conversion, the task backbone and checkpoint loading follow the width.
"""

from __future__ import annotations

import pytest
import torch

from torchdcn.models import load_pretrained, resnet18, resnet50, resnext50_32x4d
from torchdcn.models.backbones import DeformConfig, ResNet, task_backbone
from torchdcn.models.backbones.resnet import Bottleneck, resnext101_32x8d


def _channel_dims(key: str, shape: tuple[int, ...]) -> list[int]:
    """The dimensions of a state-dict tensor that count channels (conv weights: out and in per
    group, except the stem's 3 image channels; norm vectors: their length)."""
    if len(shape) == 4:
        return [0] if key == "conv1.weight" else [0, 1]
    if len(shape) == 2:  # fc: its input is the conv5 width
        return [1]
    if len(shape) == 1 and not key.startswith("fc."):
        return [0]
    return []


@pytest.mark.parametrize(
    "make", [resnet18, resnet50, resnext50_32x4d], ids=["resnet18", "resnet50", "resnext50"]
)
def test_every_channel_dimension_is_the_base_64_networks_over_4(make):
    wide, narrow = make().state_dict(), make(base_channels=16).state_dict()
    assert list(narrow) == list(wide)
    for key, tensor in narrow.items():
        expected = list(wide[key].shape)
        for d in _channel_dims(key, tuple(expected)):
            expected[d] //= 4
        assert list(tensor.shape) == expected, key


@pytest.mark.parametrize(
    ("make", "channels"),
    [(resnet18, (16, 32, 64, 128)), (resnet50, (64, 128, 256, 512))],
)
def test_feature_info_and_output_shapes(make, channels):
    body = make(features_only=True, base_channels=16)
    assert body.base_channels == 16
    assert [i.channels for i in body.feature_info] == list(channels)
    assert [i.stride for i in body.feature_info] == [4, 8, 16, 32]
    assert (body.conv1.out_channels, body.bn1.num_features) == (16, 16)
    out = body(torch.rand(2, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]
    classifier = make(base_channels=16, num_classes=7).eval()
    assert classifier.fc.in_features == channels[-1]
    assert classifier(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_deform_presets_and_configs_pick_the_same_layers_at_any_width():
    for deform in ("v1", "v2", DeformConfig(stages=(4, 5), last_n=6, offset_groups=4)):
        wide = resnet18(deform=deform).deformable_layers()
        narrow = resnet18(deform=deform, base_channels=16).deformable_layers()
        assert list(narrow) == list(wide)
        for name, layer in narrow.items():
            assert layer.in_channels * 4 == wide[name].in_channels, name
            assert layer.conv_offset.out_channels == wide[name].conv_offset.out_channels, name
    layer = resnet18(deform=DeformConfig(stages=(5,), offset_groups=4), base_channels=16)
    assert layer.layer4[0].conv2.conv_offset.out_channels == 2 * 4 * 9


def test_fresh_v1_network_equals_its_plain_twin_at_base_16():
    # zero-initialised offsets (SPEC section 2) at any width: same weights, same function
    torch.manual_seed(0)
    plain = resnet18(output_stride=16, features_only=True, base_channels=16).eval()
    torch.manual_seed(0)
    deform = resnet18(deform="v1", features_only=True, base_channels=16).eval()
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        a, b = plain(x), deform(x)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_channels": 0}, "base_channels must be a positive int"),
        ({"base_channels": -16}, "base_channels must be a positive int"),
        ({"base_channels": 16.0}, "base_channels must be a positive int"),
        ({"base_channels": True}, "base_channels must be a positive int"),
        ({"base_channels": "16"}, "base_channels must be a positive int"),
    ],
)
def test_bad_base_channels(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet18(**kwargs)


def test_resnext_needs_whole_channels_per_group():
    # 32x4d: the grouped 3x3 conv has base * 4 / 64 channels per group
    with pytest.raises(ValueError, match=r"base_channels must be a multiple of 16.*got base_ch"):
        resnext50_32x4d(base_channels=8)
    with pytest.raises(ValueError, match="multiple of 16"):
        ResNet(Bottleneck, (1, 1, 1, 1), groups=32, width_per_group=4, base_channels=24)
    assert resnext50_32x4d(base_channels=16).layer1[0].conv2.groups == 32
    assert resnext101_32x8d(base_channels=8, features_only=True).feature_info[0].channels == 32
    assert resnet50(base_channels=8).layer1[0].conv2.in_channels == 8  # no groups: any width


def test_task_backbone_width_and_freezing():
    body = task_backbone("resnet18", "v2", 16, freeze_at=2, base_channels=16)
    assert [i.channels for i in body.feature_info] == [16, 32, 64, 128]
    assert not any(p.requires_grad for p in body.layer1.parameters())
    # no weights: a small network trained from scratch trains whole
    assert all(
        p.requires_grad for p in task_backbone("resnet18", None, 16, base_channels=8).parameters()
    )
    with pytest.raises(ValueError, match="base_channels must be a positive int"):
        task_backbone("resnet18", None, 16, base_channels=0)


def test_a_64_wide_checkpoint_does_not_load_into_a_16_wide_network(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    narrow = resnet18(base_channels=16)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ValueError, match=r"shape mismatch: conv1\.weight: \(64, 3, 7, 7\)"):
        load_pretrained(narrow, path)
    for key, value in narrow.state_dict().items():  # strict: nothing was copied
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="does not fit resnet18 with base_channels=16"):
        task_backbone("resnet18", None, 16, pretrained=str(path), base_channels=16)


def test_a_16_wide_checkpoint_loads_into_a_16_wide_deformable_backbone(tmp_path):
    torch.manual_seed(1)
    source = resnet18(base_channels=16)
    path = tmp_path / "r18_16.pth"
    torch.save(source.state_dict(), path)
    body = task_backbone("resnet18", "v1", 16, pretrained=str(path), base_channels=16)
    for key, value in source.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(body.state_dict()[key], value, msg=key)
