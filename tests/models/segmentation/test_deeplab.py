"""DeepLab: shapes at output stride 16 and 8, the scores against the backbone and head run by
hand, the ignore label left out of the loss, ASPP, the presets' train step, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchdcn.models.segmentation import ASPP, DeepLab, ReduceHead, deeplab, default_aspp_rates

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # frozen BatchNorm: the training forward computes the eval forward's scores
    m = deeplab("resnet18", num_classes=3, frozen_bn=True).eval()
    with torch.no_grad():  # a classifier with visible scores (std 0.01 gives tiny ones)
        m.classifier.weight.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("output_stride", [16, 8])
def test_shapes_at_output_stride(output_stride):
    torch.manual_seed(0)
    m = deeplab("resnet18", num_classes=4, output_stride=output_stride).eval()
    assert m.stride == output_stride and m.size_divisibility == output_stride
    assert m.backbone.feature_info[-1].stride == output_stride
    assert isinstance(m.head, ReduceHead) and m.head.out_channels == 1024
    assert m.classifier.out_channels == 5
    with torch.no_grad():
        assert m(torch.rand(2, 3, 50, 37)).shape == (2, 5, 50, 37)
        # a list of sizes: the batch's largest height and width
        out = m([torch.rand(3, 40, 30), torch.rand(3, 21, 52)])
    assert out.shape == (2, 5, 40, 52)


def test_scores_are_the_upsampled_classifier_output(model):
    """Normalise, pad to a multiple of 16, backbone conv5 -> 1x1 conv + ReLU -> classifier,
    bilinear x16, crop: computed here step by step."""
    image = torch.rand(1, 3, 45, 60)
    padded = torch.zeros(1, 3, 48, 64)
    padded[:, :, :45, :60] = (image - MEAN) / STD
    with torch.no_grad():
        conv5 = model.backbone(padded)["conv5"]
        assert conv5.shape[-2:] == (3, 4)
        hidden = F.relu(F.conv2d(conv5, model.head.conv.weight, model.head.conv.bias))
        coarse = F.conv2d(hidden, model.classifier.weight, model.classifier.bias)
        want = F.interpolate(coarse, size=(48, 64), mode="bilinear", align_corners=False)
        got = model(image)
    torch.testing.assert_close(got, want[:, :, :45, :60])
    assert coarse.abs().max() > 1e-2  # the comparison sees real numbers


def test_the_ignore_label_is_left_out_of_the_loss(model):
    """The loss is the mean cross-entropy over the labelled pixels only (frozen BN: the training
    forward computes the eval forward's scores)."""
    torch.manual_seed(1)
    images = [torch.rand(3, 32, 32), torch.rand(3, 20, 28)]
    labels = [torch.randint(0, 4, (32, 32)), torch.randint(0, 4, (20, 28))]
    labels[0][:10] = 255
    labels[1][:, 5:9] = 255
    with torch.no_grad():
        scores = model(images)
    per_pixel = []
    for i, label in enumerate(labels):
        s = scores[i, :, : label.shape[0], : label.shape[1]].permute(1, 2, 0).reshape(-1, 4)
        keep = label.reshape(-1) != 255
        per_pixel.append(F.cross_entropy(s[keep], label.reshape(-1)[keep], reduction="none"))
    want = torch.cat(per_pixel).mean()
    model.train()
    try:
        with torch.no_grad():
            got = model(images, [{"semantic": lab} for lab in labels])["loss_seg"]
            # what the ignored pixels say does not matter
            other = [lab.clone() for lab in labels]
            other[0][:10] = 255
            other[1][:, 5:9] = 255
            same = model(images, [{"semantic": lab} for lab in other])["loss_seg"]
            everything_ignored = model(
                images, [{"semantic": torch.full_like(lab, 255)} for lab in labels]
            )
    finally:
        model.eval()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(same, want)
    assert everything_ignored["loss_seg"].item() == 0.0


def test_tensor_targets_equal_dict_targets(model):
    images = torch.rand(2, 3, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32))
    model.train()
    try:
        with torch.no_grad():
            a = model(images, labels)["loss_seg"]
            b = model(list(images), [{"semantic": lab} for lab in labels])["loss_seg"]
    finally:
        model.eval()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("deform", "head"), [("v1", "deeplab"), ("v2", "aspp")])
def test_preset_trains_a_step_with_a_finite_loss(deform, head):
    torch.manual_seed(0)
    m = deeplab("resnet18", deform=deform, num_classes=2, head=head, frozen_bn=False, freeze_at=0)
    layers = m.backbone.deformable_layers()
    assert len(layers) == (3 if deform == "v1" else 12)  # resnet18: 2 blocks x 2 per stage
    m.train()
    images = [torch.rand(3, 48, 48), torch.rand(3, 40, 56)]
    targets = [{"semantic": torch.randint(0, 3, im.shape[1:])} for im in images]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = m(images, targets)
    assert set(losses) == {"loss_seg"} and torch.isfinite(losses["loss_seg"])
    losses["loss_seg"].backward()
    offsets = [p.grad for n, p in m.named_parameters() if "conv_offset" in n]
    assert offsets and all(g is not None and torch.isfinite(g).all() for g in offsets)
    opt.step()
    with torch.no_grad():
        after = m(images, targets)["loss_seg"]
    assert torch.isfinite(after) and after.item() != losses["loss_seg"].item()
    m.eval()
    with torch.no_grad():
        assert m(images).shape == (2, 3, 48, 56)


def test_aspp():
    assert default_aspp_rates(16) == (6, 12, 18) and default_aspp_rates(8) == (12, 24, 36)
    torch.manual_seed(0)
    aspp = ASPP(8, 4, rates=(1, 2))
    x = torch.randn(2, 8, 9, 7)
    y = aspp(x)
    assert y.shape == (2, 4, 9, 7) and (y >= 0).all()
    # by hand: 1x1, dilated 3x3 at 1 and 2, image pooling broadcast, concatenated, projected
    parts = [F.relu(F.conv2d(x, aspp.branches[0].weight, aspp.branches[0].bias))]
    for conv, r in zip(aspp.branches[1:], (1, 2)):
        parts.append(F.relu(F.conv2d(x, conv.weight, conv.bias, padding=r, dilation=r)))
    pooled = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), aspp.pool.weight, aspp.pool.bias))
    parts.append(pooled.expand(-1, -1, 9, 7))
    want = F.relu(F.conv2d(torch.cat(parts, 1), aspp.project.weight, aspp.project.bias))
    torch.testing.assert_close(y, want)
    # one image per batch trains (no BatchNorm on the 1x1 pooled branch)
    ASPP(8, 4).train()(torch.randn(1, 8, 5, 5)).sum().backward()
    m = deeplab("resnet18", num_classes=2, head="aspp", output_stride=8)
    assert isinstance(m.head, ASPP) and m.head.rates == (12, 24, 36) and m.head.out_channels == 256


def test_bad_arguments_are_refused(model):
    with pytest.raises(ValueError, match="output_stride must be 16 or 8"):
        deeplab("resnet18", output_stride=32)
    with pytest.raises(ValueError, match="head must be one of"):
        deeplab("resnet18", head="fcn")
    with pytest.raises(ValueError, match="backbone must be one of"):
        deeplab("vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        DeepLab(model.backbone, model.head, 0)
    with pytest.raises(ValueError, match=r"images must be a Tensor\[N, 3, H, W\]"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"images\[1\] must be a Tensor\[3, H, W\]"):
        model([torch.rand(3, 16, 16), torch.rand(16, 16)])
    with pytest.raises(TypeError, match=r"images\[0\] must be a floating-point .* torch.uint8"):
        model(torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8))
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(model(image.double()), model(image))  # model's dtype
    model.train()
    try:
        with pytest.raises(ValueError, match="targets are required"):
            model(torch.rand(1, 3, 16, 16))
        with pytest.raises(ValueError, match=r"must be \[16, 16\], got \(8, 8\)"):
            model(torch.rand(1, 3, 16, 16), [{"semantic": torch.zeros(8, 8, dtype=torch.long)}])
        with pytest.raises(ValueError, match=r"outside 0\.\.3"):
            model(torch.rand(1, 3, 16, 16), torch.full((1, 16, 16), 7))
    finally:
        model.eval()
