"""Data sets for the DataLoader: in-memory tensors and distorted digits read batched equal their
get_batch, epochs select the distortion, list collate keeps sizes, old batch sources wrap."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from torchdcn.data import (
    BatchSourceDataset,
    DistortedDigits,
    Distortion,
    TensorSource,
    as_dataset,
    list_collate,
    stack_collate,
)


def _digits() -> DistortedDigits:
    gen = torch.Generator().manual_seed(1)
    images = (torch.rand(20, 28, 28, generator=gen) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (20,), generator=gen)
    return DistortedDigits(images, labels, Distortion((0.7, 1.3), (0.0, 30.0), 2.0, 32), seed=3)


def test_distorted_digits_through_a_dataloader_equal_get_batch_of_the_epoch():
    ds = _digits()
    indices = [[4, 0, 17, 9], [3, 3, 12, 1]]
    for epoch in (0, 2):
        ds.set_epoch(epoch)
        loaded = list(DataLoader(ds, batch_sampler=indices, collate_fn=stack_collate))
        for idx, (x, y) in zip(indices, loaded, strict=True):
            ex, ey = ds.get_batch(torch.tensor(idx), epoch)
            assert torch.equal(x, ex) and torch.equal(y, ey)
            assert x.shape == (4, 1, 32, 32)
    ds.set_epoch(0)
    x0, _ = ds[5]
    ds.set_epoch(1)
    x1, y1 = ds[5]
    assert not torch.equal(x0, x1)  # a fresh distortion every epoch
    torch.testing.assert_close(x1, ds.get_batch(torch.tensor([5]), 1)[0][0])
    assert y1 == ds.labels[5]


def test_tensor_source_items_and_batches():
    x, y = torch.arange(12.0).view(6, 2), torch.arange(6)
    ds = TensorSource(x, y)
    assert torch.equal(ds[4][0], x[4]) and ds[4][1] == 4
    ((bx, by),) = DataLoader(ds, batch_sampler=[[5, 1, 2]])
    assert torch.equal(bx, x[[5, 1, 2]]) and torch.equal(by, y[[5, 1, 2]])
    with pytest.raises(ValueError, match="same length, got 6 and 5"):
        TensorSource(x, y[:5])


class OldSource:
    """The former batch-source protocol only: len and get_batch(indices, epoch)."""

    def __len__(self):
        return 5

    def get_batch(self, indices, epoch=0):
        return indices.float() + 100 * epoch, indices


def test_batch_sources_are_wrapped_and_anything_else_refused():
    ds = as_dataset(OldSource())
    assert isinstance(ds, BatchSourceDataset) and len(ds) == 5
    ds.set_epoch(2)
    ((bx, by),) = DataLoader(ds, batch_sampler=[[3, 1]])
    assert bx.tolist() == [203.0, 201.0] and by.tolist() == [3, 1]
    tensors = TensorSource(torch.zeros(2), torch.zeros(2))
    assert as_dataset(tensors) is tensors
    with pytest.raises(TypeError, match=r"map-style .* got int"):
        as_dataset(3)


def test_list_collate_keeps_images_of_different_sizes():
    a, b = torch.rand(3, 4, 5), torch.rand(3, 7, 2)
    ta, tb = {"boxes": torch.rand(1, 4)}, {"boxes": torch.rand(3, 4)}
    images, targets = list_collate([(a, ta), (b, tb)])
    assert images[0] is a and images[1] is b and targets == [ta, tb]
    with pytest.raises(ValueError, match="empty"):
        list_collate([])
    with pytest.raises(ValueError, match=r"same fields, got lengths \[1, 2\]"):
        list_collate([(a, ta), (b,)])
