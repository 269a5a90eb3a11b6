"""Image batching: padding to a multiple of size_divisibility, sizes kept, content in place."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.image_list import ImageList, batch_images


def test_pads_bottom_right_to_a_multiple_and_keeps_sizes():
    a = torch.arange(3 * 5 * 7, dtype=torch.float32).view(3, 5, 7)
    b = -torch.ones(3, 9, 4)
    batch = batch_images([a, b], size_divisibility=8, pad_value=-7.0)
    assert tuple(batch.tensors.shape) == (2, 3, 16, 8)
    assert batch.image_sizes == [(5, 7), (9, 4)]
    assert torch.equal(batch.tensors[0, :, :5, :7], a)
    assert torch.equal(batch.tensors[1, :, :9, :4], b)
    # Everything outside each image is the pad value.
    padded = torch.ones(2, 3, 16, 8, dtype=torch.bool)
    padded[0, :, :5, :7] = False
    padded[1, :, :9, :4] = False
    assert torch.all(batch.tensors[padded] == -7.0)
    assert len(batch) == 2


@pytest.mark.parametrize(("divisor", "expected"), [(1, (9, 7)), (16, (16, 16)), (3, (9, 9))])
def test_padded_size_is_the_max_rounded_up(divisor, expected):
    batch = batch_images([torch.zeros(1, 5, 7), torch.zeros(1, 9, 4)], divisor)
    assert tuple(batch.tensors.shape[-2:]) == expected


def test_to_changes_dtype_and_keeps_sizes():
    batch = batch_images([torch.zeros(3, 4, 4)], 4).to(torch.float64)
    assert batch.tensors.dtype == torch.float64
    assert batch.image_sizes == [(4, 4)]


def test_bad_input_raises_with_the_argument_name():
    with pytest.raises(ValueError, match=r"images\[1\] has 1 channels"):
        batch_images([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="size_divisibility"):
        batch_images([torch.zeros(3, 4, 4)], 0)
    with pytest.raises(TypeError, match="images"):
        batch_images(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"images\[0\] must be a Tensor\[C, H, W\]"):
        batch_images([torch.zeros(4, 4)])
    with pytest.raises(ValueError, match="larger than the padded"):
        ImageList(torch.zeros(1, 3, 4, 4), [(5, 4)])
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        ImageList(torch.zeros(2, 3, 4, 4), [(4, 4)])


def test_normalize_and_batch_normalises_pads_and_names_bad_images():
    from torchdcn.models.detection.image_list import normalize_and_batch

    mean = torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)
    std = torch.tensor([0.5, 0.25, 1.0]).view(3, 1, 1)
    a, b = torch.rand(3, 5, 7), torch.rand(3, 9, 4)
    batch = normalize_and_batch([a, b], mean, std, 4)
    assert batch.tensors.shape == (2, 3, 12, 8) and batch.image_sizes == [(5, 7), (9, 4)]
    torch.testing.assert_close(batch.tensors[0, :, :5, :7], (a - mean) / std)
    torch.testing.assert_close(batch.tensors[1, :, :9, :4], (b - mean) / std)
    assert batch.tensors[0, :, 5:, :].abs().sum() == 0
    # a stacked batch (default_collate): the error says what to pass instead
    with pytest.raises(
        TypeError, match=r"got a Tensor of shape \[1, 3, 4, 4\]; pass list\(images\)"
    ):
        normalize_and_batch(torch.rand(1, 3, 4, 4), mean, std, 1)
    with pytest.raises(TypeError, match="non-empty list"):
        normalize_and_batch([], mean, std, 1)
    with pytest.raises(ValueError, match=r"images\[1\] must have a positive height and width"):
        normalize_and_batch([a, torch.rand(3, 0, 4)], mean, std, 1)
    with pytest.raises(
        ValueError, match=r"images\[1\] must be a Tensor\[3, H, W\], got \(1, 4, 4\)"
    ):
        normalize_and_batch([a, torch.rand(1, 4, 4)], mean, std, 1)
    # integer images: a clear error (a uint8 std of 0 used to give inf, then NaN losses)
    with pytest.raises(TypeError, match=r"images\[0\] must be a floating-point .* torch.uint8"):
        normalize_and_batch([(a * 255).to(torch.uint8)], mean, std, 1)
    # float64 images for a float32 model: computed in the model's dtype (mean/std's)
    batch = normalize_and_batch([a.double()], mean, std, 1)
    assert batch.tensors.dtype == torch.float32
    torch.testing.assert_close(batch.tensors[0], (a - mean) / std)
