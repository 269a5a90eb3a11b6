"""The backbone contract: ``feature_info`` and ``size_divisibility`` describe the actual outputs.

Every constructor of :data:`torchdcn.models.backbones.resnet.ARCHITECTURES` is checked at every
output stride, so a new table row is tested without touching this file. Shapes of the large
networks come from a meta-device forward (no memory, no arithmetic), those of ResNet-18 from a
real forward.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from torchdcn import models
from torchdcn.models import FeatureInfo
from torchdcn.models.backbones import resnet as resnet_module
from torchdcn.models.backbones.resnet import ARCHITECTURES

OUTPUT_STRIDES = (32, 16, 8)
# Stage strides and channels written out independently of the implementation (torchvision's
# ResNet at stride 32; dilation keeps the stride of the stage before it).
STRIDES = {32: (4, 8, 16, 32), 16: (4, 8, 16, 16), 8: (4, 8, 8, 8)}
BASIC_CHANNELS, BOTTLENECK_CHANNELS = (64, 128, 256, 512), (256, 512, 1024, 2048)


def expected_channels(name: str) -> tuple[int, ...]:
    return BASIC_CHANNELS if name in ("resnet18", "resnet34") else BOTTLENECK_CHANNELS


def test_every_public_constructor_is_a_table_row():
    """The public ``resnet*`` / ``resnext*`` functions are exactly the table's rows, so the tests
    parametrised over the table cover every constructor."""
    public = {
        name
        for name, fn in inspect.getmembers(resnet_module, inspect.isfunction)
        if name.startswith(("resnet", "resnext")) and fn.__module__ == resnet_module.__name__
    }
    assert public == set(ARCHITECTURES)
    assert all(getattr(models, name) is getattr(resnet_module, name) for name in ARCHITECTURES)


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_feature_info_matches_the_outputs(name, output_stride):
    with torch.device("meta"):
        model = getattr(models, name)(output_stride=output_stride, features_only=True)
        features = model(torch.randn(2, 3, 64, 96))
    assert model.feature_info == [
        FeatureInfo(f"conv{stage}", c, s)
        for stage, c, s in zip((2, 3, 4, 5), expected_channels(name), STRIDES[output_stride])
    ]
    assert model.size_divisibility == output_stride
    assert [info.name for info in model.feature_info] == list(features)
    for info, out in zip(model.feature_info, features.values()):
        assert tuple(out.shape) == (2, info.channels, 64 // info.stride, 96 // info.stride)


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_feature_info_on_a_real_forward(output_stride):
    """A real CPU forward, sizes a multiple of ``size_divisibility`` (exact) and not (ceil)."""
    model = models.resnet18(deform="v2", output_stride=output_stride, features_only=True).eval()
    d = model.size_divisibility
    for h, w in ((2 * d, 3 * d), (2 * d + 5, 3 * d - 3)):
        with torch.no_grad():
            features = model(torch.randn(1, 3, h, w))
        for info, (key, out) in zip(model.feature_info, features.items()):
            assert key == info.name
            assert tuple(out.shape) == (
                1,
                info.channels,
                math.ceil(h / info.stride),
                math.ceil(w / info.stride),
            )


def test_feature_info_without_features_only():
    """The conv5 map of ``num_classes=None`` is the last entry; the classifier changes nothing."""
    with torch.device("meta"):
        head_less = models.resnet50(output_stride=16, num_classes=None)
        out = head_less(torch.randn(1, 3, 64, 64))
        classifier = models.resnet50(output_stride=16)
    last = head_less.feature_info[-1]
    assert tuple(out.shape) == (1, last.channels, 64 // last.stride, 64 // last.stride)
    assert classifier.feature_info == head_less.feature_info
    assert classifier.size_divisibility == head_less.size_divisibility == 16


def test_named_views_agree_with_feature_info():
    with torch.device("meta"):
        model = models.resnext50_32x4d(output_stride=8)
    assert model.feature_channels == {i.name: i.channels for i in model.feature_info}
    assert model.feature_strides == {"conv2": 4, "conv3": 8, "conv4": 8, "conv5": 8}


def test_feature_info_rejects_bad_fields():
    with pytest.raises(ValueError, match="channels"):
        FeatureInfo("conv2", 0, 4)
    with pytest.raises(ValueError, match="stride"):
        FeatureInfo("conv2", 64, True)
    with pytest.raises(TypeError, match="name"):
        FeatureInfo("", 64, 4)
    with pytest.raises(ValueError, match="name must be one of"):
        resnet_module._create("resnet42")
