"""``task_backbone``: the ResNet the detection and segmentation presets share."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.backbones import task_backbone
from torchdcn.nn import FrozenBatchNorm2d


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3])
def test_freezes_the_stages_up_to_freeze_at(freeze_at):
    body = task_backbone("resnet18", None, 16, frozen_bn=False, freeze_at=freeze_at)
    stages = [("conv1", body.conv1), ("layer1", body.layer1), ("layer2", body.layer2)]
    for depth, (name, module) in enumerate(stages, start=1):
        trainable = {p.requires_grad for p in module.parameters()}
        assert trainable == {depth > freeze_at}, (name, freeze_at)
    assert all(p.requires_grad for p in body.layer4.parameters())


def test_features_only_output_stride_and_frozen_bn():
    body = task_backbone("resnet18", "v1", 8, frozen_bn=True)
    out = body(torch.rand(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()][-1] == (8, 8)
    assert isinstance(body.bn1, FrozenBatchNorm2d)


def _frozen_names(body):
    return {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}


def test_without_weights_everything_trains(tmp_path):
    # frozen statistics of a random network are mean 0, variance 1: no normalisation at all
    body = task_backbone("resnet18", None, 16)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert isinstance(body.bn1, torch.nn.BatchNorm2d)
    assert _frozen_names(body) == set()


def test_with_weights_detectron_freezing(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(task_backbone("resnet18", None, 32).state_dict(), path)
    body = task_backbone("resnet18", None, 16, pretrained=str(path))
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert _frozen_names(body) == {"conv1", "layer1"}  # FrozenBatchNorm2d: buffers
    # explicit values win over the rule, both ways
    body = task_backbone("resnet18", None, 16, False, 1, pretrained=str(path))
    assert isinstance(body.bn1, torch.nn.BatchNorm2d) and _frozen_names(body) == {"conv1", "bn1"}
    body = task_backbone("resnet18", None, 16, frozen_bn=True, freeze_at=2)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert _frozen_names(body) == {"conv1", "layer1"}  # FrozenBatchNorm2d: buffers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "vgg16"}, "backbone must be one of"),
        ({"freeze_at": 6}, r"freeze_at must be an int 0\.\.5"),
        ({"freeze_at": True}, r"freeze_at must be an int 0\.\.5"),
        ({"freeze_at": 2.0}, r"freeze_at must be an int 0\.\.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"name": "resnet18", "deform": None, "output_stride": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        task_backbone(**args)


def test_frozen_bn_must_be_a_bool():
    with pytest.raises(TypeError, match=r"frozen_bn must be a bool or None, got 'yes'"):
        task_backbone("resnet18", None, 16, frozen_bn="yes")
