"""The one target and orig_sizes check of every detector (Faster R-CNN with and without FPN,
R-FCN, Mask R-CNN, the class-aware RPN detector): each bad target is refused before training on
it, with a message naming ``targets[i]['key']`` and the bad row; batched images, empty images
and malformed ``orig_sizes`` get clear errors; integer-tensor ``orig_sizes`` are accepted."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from torchdcn.models.detection import faster_rcnn, inputs, mask_rcnn, rfcn, rpn_detector
from torchdcn.models.detection.inputs import check_orig_sizes, check_target, check_targets

B = torch.tensor
TOP_N = {"training": 50, "testing": 50}
KINDS = {
    "faster_rcnn": lambda: faster_rcnn("resnet18", num_classes=3, base_channels=8),
    "faster_rcnn_fpn": lambda: faster_rcnn(
        "resnet18",
        num_classes=3,
        base_channels=8,
        fpn=True,
        fpn_channels=16,
        anchor_sizes=(8, 16, 32, 64, 128),
    ),
    "rfcn": lambda: rfcn("resnet18", num_classes=3, base_channels=8, reduce_channels=16),
    "mask_rcnn": lambda: mask_rcnn("resnet18", num_classes=3, base_channels=8, mask_channels=8),
    "rpn_detector": lambda: rpn_detector("resnet18", num_classes=3, base_channels=8),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def model(request):
    torch.manual_seed(0)
    return KINDS[request.param]()


def _target(boxes=None, labels=None, masks=True):
    boxes = B([[10.0, 10.0, 40.0, 50.0]]) if boxes is None else boxes
    target = {"boxes": boxes, "labels": B([1]) if labels is None else labels}
    if masks:
        target["masks"] = torch.zeros(len(boxes) if boxes.dim() == 2 else 1, 64, 64)
    return target


BAD_TARGETS = [
    # (what, target, error, message)
    ("degenerate box", _target(B([[10.0, 10.0, 10.0, 50.0]])), ValueError,
     r"targets\[0\]\['boxes'\] must be finite with x2 > x1 and y2 > y1 .* row 0 = "
     r"\[10.0, 10.0, 10.0, 50.0\]"),
    ("inverted box", _target(B([[10.0, 10.0, 40.0, 50.0], [40.0, 50.0, 10.0, 10.0]]), B([1, 2])),
     ValueError, r"targets\[0\]\['boxes'\] must be finite .* row 1 = \[40.0, 50.0, 10.0, 10.0\]"),
    ("nan box", _target(B([[10.0, float("nan"), 40.0, 50.0]])), ValueError,
     r"targets\[0\]\['boxes'\] must be finite .* row 0 = \[10.0, nan, 40.0, 50.0\]"),
    ("inf box", _target(B([[10.0, 10.0, float("inf"), 50.0]])), ValueError,
     r"targets\[0\]\['boxes'\] must be finite .* row 0"),
    ("integer boxes", _target(B([[10, 10, 40, 50]])), TypeError,
     r"targets\[0\]\['boxes'\] must be a floating-point Tensor\[G, 4\].*torch.int64"),
    ("boxes as a list", {**_target(), "boxes": [[10.0, 10.0, 40.0, 50.0]]}, TypeError,
     r"targets\[0\]\['boxes'\] must be a floating-point Tensor\[G, 4\].*got list"),
    ("boxes [4]", _target(B([10.0, 10.0, 40.0, 50.0])), ValueError,
     r"targets\[0\]\['boxes'\] must be a Tensor\[G, 4\].*got shape \[4\]"),
    ("labels as a list", _target(labels=[1]), TypeError,
     r"targets\[0\]\['labels'\] must be an integer Tensor\[G\].*got list"),
    ("float labels", _target(labels=B([1.7])), TypeError,
     r"targets\[0\]\['labels'\] must be an integer Tensor\[G\].*torch.float32"),
    ("label 0", _target(labels=B([0])), ValueError,
     r"targets\[0\]\['labels'\] must be in 1..3 \(0 is the background\), got 0 at row 0"),
    ("label 4", _target(labels=B([4])), ValueError, r"targets\[0\]\['labels'\] must be in 1..3"),
    ("two labels, one box", _target(labels=B([1, 2])), ValueError,
     r"targets\[0\]\['labels'\] must be a Tensor\[G\] with G = 1"),
    ("no labels", {"boxes": B([[10.0, 10.0, 40.0, 50.0]])}, ValueError,
     r"targets\[0\] must have 'boxes' and 'labels'"),
    ("a tuple, not a dict", (B([[10.0, 10.0, 40.0, 50.0]]), B([1])), TypeError,
     r"targets\[0\] must be a dict"),
]  # fmt: skip


@pytest.mark.parametrize(
    "what, target, error, message", BAD_TARGETS, ids=[t[0] for t in BAD_TARGETS]
)
def test_every_detector_refuses_bad_targets_by_name(model, what, target, error, message):
    model.train()
    with pytest.raises(error, match=message):
        model([torch.rand(3, 64, 64)], [target])


def test_every_detector_takes_good_targets_and_int32_labels(model):
    model.train()
    target = _target(labels=B([2], dtype=torch.int32))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    empty["masks"] = torch.zeros(0, 48, 80)
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 80)], [target, empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_targets_are_checked_once_per_training_step(model, monkeypatch):
    """The detector checks the targets; its RPN, box and mask heads skip their own check (one
    device sync per image and head) inside it, and check again when called on their own."""
    calls = []
    check = inputs.check_target

    def counted(index, *args):
        calls.append(index)
        return check(index, *args)

    for name in ("inputs", "rpn", "box_head", "mask_rcnn"):  # (mask_rcnn is also the preset)
        module = importlib.import_module(f"torchdcn.models.detection.{name}")
        monkeypatch.setattr(module, "check_target", counted)
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    target2 = {**_target(B([[5.0, 6.0, 30.0, 40.0]])), "masks": torch.zeros(1, 48, 80)}
    model(images, [_target(), target2])
    assert calls == [0, 1]  # check_targets, before the heads
    assert not inputs.checked_by_caller()  # the skip ends with the call


def test_the_skip_ends_when_a_head_fails(model):
    model.train()
    with pytest.raises(ValueError), inputs.targets_checked():
        raise ValueError("a failing head")
    assert not inputs.checked_by_caller()
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be finite"):
        model([torch.rand(3, 64, 64)], [_target(B([[10.0, 10.0, 10.0, 50.0]]))])


def test_targets_must_be_a_list_of_dicts(model):
    model.train()
    with pytest.raises(TypeError, match=r"targets must be a list of dicts .*got dict"):
        model([torch.rand(3, 64, 64)], _target())
    with pytest.raises(ValueError, match=r"targets must hold one dict per image \(1\), got 2"):
        model([torch.rand(3, 64, 64)], [_target(), _target()])


def test_batched_and_empty_images_get_clear_errors(model):
    model.eval()
    with pytest.raises(TypeError, match=r"list\(images\).*list_collate"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"images\[1\] must have a positive height and width"):
        model([torch.rand(3, 64, 64), torch.rand(3, 0, 0)])


def test_orig_sizes_as_tensors_and_bad_ones(model):
    model.eval()
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        plain = model(image, orig_sizes=[(128, 96)])[0]
        as_tensor = model(image, orig_sizes=[B([128, 96])])[0]
        as_scalars = model(image, orig_sizes=[(B(128), B(96))])[0]
    for out in (as_tensor, as_scalars):
        assert all(torch.equal(plain[k], out[k]) for k in plain)
    with pytest.raises(TypeError, match=r"orig_sizes\[0\] must be a pair \(height, width\).*64"):
        model(image, orig_sizes=[64])
    with pytest.raises(ValueError, match=r"orig_sizes\[0\] must be a positive"):
        model(image, orig_sizes=[(0, 0)])
    with pytest.raises(ValueError, match=r"orig_sizes must give one \(h, w\) per image \(1\)"):
        model(image, orig_sizes=[(64, 64), (32, 32)])


def test_check_orig_sizes():
    assert check_orig_sizes(None, 3) is None
    assert check_orig_sizes(B([[10, 20], [30, 40]]), 2) == [(10, 20), (30, 40)]
    # integer-valued floats are sizes too (480.0 as earlier versions took it)
    assert check_orig_sizes([(10.0, 20.0), B([30.0, 40.0])], 2) == [(10, 20), (30, 40)]
    for bad in ([(10.5, 20.0)], [(True, 2)], [B([1.5, 2.0])], [B([1, 2, 3])], ["ab"]):
        with pytest.raises(TypeError, match=r"orig_sizes\[0\]"):
            check_orig_sizes(bad, 1)
    with pytest.raises(TypeError, match="orig_sizes must be a list"):
        check_orig_sizes({"a": (1, 2)}, 1)


def test_masks_must_be_a_tensor_at_the_image_size():
    good = _target()
    check_target(0, good, 3, (64, 64))
    with pytest.raises(ValueError, match=r"targets\[2\]\['masks'\] must be \[G, H, W\] = "
                       r"\[1, 64, 64\] .*got \[1, 128, 128\]"):  # fmt: skip
        check_target(2, {**good, "masks": torch.zeros(1, 128, 128)}, 3, (64, 64))
    with pytest.raises(TypeError, match=r"targets\[0\]\['masks'\] must be a Tensor.*got list"):
        check_target(0, {**good, "masks": [torch.zeros(64, 64)]}, 3, (64, 64))
    # a plain RPN needs no labels
    check_targets([{"boxes": B([[1.0, 1.0, 5.0, 5.0]])}], [(8, 8)], None)


@pytest.mark.parametrize(
    "bad",
    [True, 1 + 0j, "64", B([64]), B(64.0, requires_grad=True), 64.5, math.nan, math.inf],
    ids=["bool", "complex", "str", "1-d", "grad", "64.5", "nan", "inf"],
)
def test_orig_sizes_refused_as_every_integer_argument(bad):
    """_checks.real_scalar's integer rule with integer-valued floats (64.0) accepted; every
    refusal is the pair's TypeError, as it always was, with the element's reason."""
    match = r"^orig_sizes\[0\] must be a pair \(height, width\) of ints .*; orig_sizes\[0\]\[1\]"
    with pytest.raises(TypeError, match=match):
        check_orig_sizes([(64, bad)], 1)
    assert check_orig_sizes([(64, B(48.0)), (B(2), 3.0)], 2) == [(64, 48), (2, 3)]
