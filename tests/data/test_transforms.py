"""Detection transforms: boxes and masks move with the image (hand-computed), seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchdcn.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    detection_transforms,
    resized_shape,
)


def _box_mask(box, height, width):
    """uint8 [H, W]: 1 on the pixels whose centres lie inside ``box`` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    ys = torch.arange(height)[:, None] + 0.5
    xs = torch.arange(width)[None, :] + 0.5
    return ((xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)).to(torch.uint8)


def _sample(height=40, width=60):
    image = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width)
    boxes = torch.tensor([[10.0, 4.0, 30.0, 20.0], [0.0, 0.0, 60.0, 40.0]])
    boxes[1, 2:] = torch.tensor([width, height], dtype=torch.float32)
    masks = torch.stack([_box_mask(b.tolist(), height, width) for b in boxes])
    target = {
        "boxes": boxes,
        "crowd_boxes": torch.tensor([[2.0, 2.0, 8.0, 6.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
        "size": (height, width),
        "image_id": 7,
    }
    return image, target


@pytest.mark.parametrize(
    "hw, sizes, want",
    [
        ((480, 640), (600, 1000), (600, 800)),  # shorter side to 600
        ((400, 1000), (600, 1000), (400, 1000)),  # 600 would make the long side 1500: cap at 1000
        ((333, 500), (600, 1000), (600, 901)),  # 500 * 600 / 333 = 900.9 -> 901
        ((640, 427), (800, 1333), (1199, 800)),  # 640 * 800 / 427 = 1199.06
        ((10, 10), (5, 8), (5, 5)),
    ],
)
def test_resized_shape(hw, sizes, want):
    assert resized_shape(*hw, *sizes) == want


def test_resize_moves_boxes_and_masks():
    image, target = _sample()
    out_image, out = Resize(min_size=20, max_size=100)(image, target)
    assert out_image.shape == (3, 20, 30) and out["size"] == (20, 30)
    # the scale is exactly 0.5 in both directions
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 2.0, 15.0, 10.0], [0, 0, 30, 20]]))
    torch.testing.assert_close(out["crowd_boxes"], torch.tensor([[1.0, 1.0, 4.0, 3.0]]))
    for box, mask in zip(out["boxes"], out["masks"]):
        assert torch.equal(mask, _box_mask(box.tolist(), 20, 30))
    assert out["masks"].dtype == torch.uint8
    assert torch.equal(out["labels"], target["labels"]) and out["image_id"] == 7
    # the input dict is left alone
    assert target["size"] == (40, 60) and target["boxes"][0, 0] == 10.0


def test_resize_uneven_scale_uses_each_sides_ratio():
    image = torch.zeros(3, 333, 500, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[100.0, 111.0, 500.0, 333.0]]), "size": (333, 500)}
    out_image, out = Resize(600, 1000)(image, target)
    assert out_image.shape == (3, 600, 901) and out_image.dtype == torch.uint8
    want = torch.tensor([[100 * 901 / 500, 111 * 600 / 333, 901.0, 600.0]])
    torch.testing.assert_close(out["boxes"], want)


def test_resize_keeps_pixel_values_of_a_constant_image():
    image = torch.full((3, 30, 40), 0.25)
    out_image, _ = Resize(15, 100)(image, {"size": (30, 40)})
    torch.testing.assert_close(out_image, torch.full((3, 15, 20), 0.25))


def test_multi_scale_draws_each_size_from_the_generator():
    image, target = _sample()
    resize = Resize(min_size=(10, 20, 30), max_size=1000)
    seen = {
        resize(image, target, torch.Generator().manual_seed(s))[1]["size"][0] for s in range(40)
    }
    assert seen == {10, 20, 30}
    a = resize(image, target, torch.Generator().manual_seed(3))[1]["size"]
    b = resize(image, target, torch.Generator().manual_seed(3))[1]["size"]
    assert a == b


def test_flip_moves_boxes_and_masks():
    image, target = _sample()
    out_image, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(out_image, image.flip(-1)) and out["flipped"] is True
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[30.0, 4.0, 50.0, 20.0], [0, 0, 60, 40]])
    )
    torch.testing.assert_close(out["crowd_boxes"], torch.tensor([[52.0, 2.0, 58.0, 6.0]]))
    for box, mask in zip(out["boxes"], out["masks"]):
        assert torch.equal(mask, _box_mask(box.tolist(), 40, 60))
    back_image, back = RandomHorizontalFlip(p=1.0)(out_image, out)
    assert torch.equal(back_image, image) and back["flipped"] is False
    torch.testing.assert_close(back["boxes"], target["boxes"])


def test_flip_probability_and_seeding():
    image, target = _sample(4, 6)
    never = RandomHorizontalFlip(p=0.0)
    assert not any(
        never(image, target, torch.Generator().manual_seed(s))[1]["flipped"] for s in range(20)
    )
    half = RandomHorizontalFlip(p=0.5)
    flips = [
        half(image, target, torch.Generator().manual_seed(s))[1]["flipped"] for s in range(400)
    ]
    assert 150 < sum(flips) < 250
    again = [
        half(image, target, torch.Generator().manual_seed(s))[1]["flipped"] for s in range(400)
    ]
    assert flips == again


def test_resize_then_flip_compose():
    image, target = _sample()
    pipeline = Compose([ToTensor(), Resize(20, 100), RandomHorizontalFlip(1.0)])
    out_image, out = pipeline(image, target, torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 20, 30)
    # (10, 4, 30, 20) -> scale 0.5 -> (5, 2, 15, 10) -> flip in width 30 -> (15, 2, 25, 10)
    torch.testing.assert_close(out["boxes"][0], torch.tensor([15.0, 2.0, 25.0, 10.0]))
    assert torch.equal(out["masks"][0], _box_mask([15, 2, 25, 10], 20, 30))
    assert "Resize(min_size=20" in repr(pipeline)


def test_to_tensor_from_uint8_array_pil_and_tensor():
    from PIL import Image

    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # [H, W, C]
    want = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for source in (array, Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1)):
        image, target = ToTensor()(source, {})
        torch.testing.assert_close(image, want)
        assert target["size"] == (2, 3)
    gray, _ = ToTensor()(np.full((2, 3), 255, dtype=np.uint8), {})
    assert gray.shape == (1, 2, 3) and gray.max().item() == 1.0


def test_empty_targets_pass_through():
    image = torch.zeros(3, 40, 60)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 40, 60, dtype=torch.uint8)}
    _, out = detection_transforms(True, 20, 100)(image, target, torch.Generator())
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 20, 30)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_size"):
        Resize(0, 10)
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match=r"Tensor\[C, H, W\]"):
        Resize()(torch.zeros(4, 4), {})
    with pytest.raises(TypeError, match="target must be a dict"):
        RandomHorizontalFlip()(torch.zeros(3, 4, 4), None)
    with pytest.raises(TypeError, match="callable"):
        Compose([1])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Resize("600"), TypeError, "min_size must be a number of pixels or a sequence"),
        (lambda: Resize(None), TypeError, "got None (NoneType)"),
        (lambda: Resize([]), ValueError, "min_size must hold at least one size"),
        (lambda: Resize(float("nan")), ValueError, "min_size must be a finite number of pixels"),
        (lambda: Resize(600, float("inf")), ValueError, "max_size must be a finite number"),
        (lambda: Resize([600, "800"]), TypeError, "min_size must be a number of pixels, got '800'"),
        (lambda: Resize(600, True), TypeError, "max_size must be a number of pixels, got True"),
        (lambda: Compose(lambda i, t, g: (i, t)), TypeError, "got one function (wrap it"),
        (lambda: Compose(None), TypeError, "transforms must be a list of callables, got NoneType"),
    ],
)
def test_bad_transform_arguments_name_what_they_got(make, error, message):
    import re

    with pytest.raises(error, match=re.escape(message)):
        make()


@pytest.mark.parametrize("transform", [Resize(10), RandomHorizontalFlip(1.0)])
def test_targets_that_do_not_fit_the_image_are_refused(transform):
    import re

    image = torch.zeros(3, 5, 5)
    cases = [
        # 7x7 masks on a 5x5 image were rescaled (or flipped) silently
        ({"masks": torch.zeros(1, 7, 7, dtype=torch.uint8)}, ValueError, "got (1, 7, 7)"),
        ({"masks": torch.zeros(5, 5, dtype=torch.uint8)}, ValueError, "[K, H, W] with the image"),
        ({"boxes": torch.tensor([1.0, 1, 2, 2])}, ValueError, "target['boxes'] must be [K, 4]"),
        ({"boxes": [[1, 1, 2, 2]]}, TypeError, "target['boxes'] must be a Tensor[K, 4], got list"),
        ({"crowd_boxes": torch.zeros(2, 5)}, ValueError, "target['crowd_boxes'] must be [K, 4]"),
    ]
    for target, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            transform(image, target, torch.Generator())
