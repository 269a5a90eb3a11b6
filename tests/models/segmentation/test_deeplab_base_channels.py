"""DeepLab at ``base_channels=16``: the head reads conv5's 128 channels from ``feature_info`` and
the network trains and predicts on a 64 x 64 image (``deform="v1"``, 1x1 head and ASPP)."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.segmentation import deeplab


@pytest.mark.parametrize(("head", "output_stride"), [("deeplab", 16), ("aspp", 8)])
def test_deeplab_at_base_16_trains_and_predicts(head, output_stride):
    torch.manual_seed(0)
    model = deeplab(
        "resnet18", "v1", num_classes=2, output_stride=output_stride, head=head,
        base_channels=16, head_channels=32,
    )  # fmt: skip
    assert [i.channels for i in model.backbone.feature_info] == [16, 32, 64, 128]
    first = next(m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 128
    image = torch.rand(3, 64, 64)
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[10:40, 12:50] = 2
    losses = model.train()([image], [label])
    assert set(losses) == {"loss_seg"} and torch.isfinite(losses["loss_seg"])
    losses["loss_seg"].backward()
    assert model.backbone.layer4[-1].conv2.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.eval()([image]).shape == (1, 3, 64, 64)


def test_deeplab_refuses_a_bad_base_channels():
    with pytest.raises(ValueError, match="base_channels must be a positive int"):
        deeplab("resnet18", base_channels=-1)
