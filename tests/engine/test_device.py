"""to_device: every tensor of a nested batch moves, the structure and everything else stay."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from torchdcn.engine import resolve_device, to_device

Pair = namedtuple("Pair", "image target")


def test_nested_detection_batch_moves_every_tensor_and_keeps_the_rest():
    images = [torch.rand(3, 5, 7), torch.rand(3, 9, 4)]  # different sizes: not stackable
    targets = [
        {"boxes": torch.rand(2, 4), "labels": torch.tensor([1, 5]), "image_id": "a.jpg"},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "iscrowd": None},
    ]
    batch = (images, targets, Pair(torch.ones(1), 7), "meta", 3.5)
    moved = to_device(batch, "meta")
    assert type(moved) is tuple and len(moved) == 5
    out_images, out_targets, pair, text, number = moved
    assert [t.device.type for t in out_images] == ["meta", "meta"]
    assert [tuple(t.shape) for t in out_images] == [(3, 5, 7), (3, 9, 4)]
    assert list(out_targets[0]) == ["boxes", "labels", "image_id"]  # key order kept
    assert out_targets[0]["labels"].device.type == "meta"
    assert out_targets[0]["labels"].dtype == torch.long
    assert out_targets[0]["image_id"] == "a.jpg" and out_targets[1]["iscrowd"] is None
    assert out_targets[1]["boxes"].shape == (0, 4) and out_targets[1]["boxes"].is_meta
    assert type(pair) is Pair and pair.image.is_meta and pair.target == 7
    assert text == "meta" and number == 3.5
    # the input is not changed in place
    assert images[0].device.type == "cpu" and targets[0]["boxes"].device.type == "cpu"


def test_tensor_already_on_the_device_is_not_copied():
    t = torch.rand(3)
    assert to_device(t, "cpu") is t
    assert to_device({"x": [t]}, torch.device("cpu"))["x"][0] is t


def test_resolve_device_is_still_importable_from_the_trainer_module():
    from torchdcn.engine.trainer import resolve_device as old_name

    assert old_name is resolve_device
    with pytest.raises(ValueError, match="got 'tpu'"):
        resolve_device("tpu")
