"""Data sets that augment with the global RNGs (torch.rand, random, numpy.random in __getitem__)
resume exactly and do not depend on the worker count: the trainer seeds each read."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from torchdcn.data import TensorSource
from torchdcn.engine import Trainer
from torchdcn.engine.seeded_data import SeededSamples


class GlobalRngAugmented(Dataset):
    """Fixed images plus noise drawn from all three global RNGs at every read (the usual
    torchvision-transforms pattern): ``[1, 10, 10]`` images, 4 classes."""

    def __init__(self, n: int = 48) -> None:
        gen = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, 4, (n,), generator=gen)
        self.x = torch.rand(n, 1, 10, 10, generator=gen) + 0.5 * self.y.view(n, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shift = 0.1 * random.random() + 0.1 * float(np.random.rand())  # noqa: NPY002
        return self.x[i] + 0.2 * torch.rand(1, 10, 10) + shift, self.y[i]


class Batched(GlobalRngAugmented):
    """The same, read a batch at a time with one draw."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        noise = 0.2 * torch.rand(len(indices), 1, 10, 10)
        return [(self.x[i] + n, self.y[i]) for i, n in zip(indices, noise, strict=True)]


def _global_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()  # noqa: NPY002


def test_a_sample_is_one_draw_of_seed_epoch_index_and_the_global_state_is_kept():
    data = GlobalRngAugmented(6)
    torch.manual_seed(11)
    before = _global_states()
    a = SeededSamples(data, seed=3, epoch=1)
    forward = [a[i][0] for i in range(6)]
    backward = a.__getitems__([5, 4, 3, 2, 1, 0])[::-1]  # other order, other history
    for x, (y, _) in zip(forward, backward, strict=True):
        assert torch.equal(x, y)
    after = _global_states()
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert np.array_equal(before[2], after[2])
    # other samples, epochs and seeds are other draws (the noise differs, not just the image)
    noise = [x - data.x[i] for i, x in enumerate(forward)]
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(SeededSamples(data, 3, 2)[0][0], forward[0])
    assert not torch.equal(SeededSamples(data, 4, 1)[0][0], forward[0])


def test_batched_reads_are_seeded_per_index_list():
    data = Batched(8)
    a = SeededSamples(data, seed=3, epoch=0).__getitems__([1, 2, 3])
    torch.rand(5)  # the global state moves on in between
    b = SeededSamples(data, seed=3, epoch=0).__getitems__([1, 2, 3])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    c = SeededSamples(data, seed=3, epoch=1).__getitems__([1, 2, 3])
    assert not torch.equal(a[0][0], c[0][0])


def test_data_sets_with_their_own_generators_read_the_same():
    data = TensorSource(torch.randn(5, 2), torch.arange(5))
    wrapped = SeededSamples(data, seed=1, epoch=2)
    assert len(wrapped) == 5
    for (x, y), (u, v) in zip(wrapped.__getitems__([4, 0, 2]), data.__getitems__([4, 0, 2])):
        assert torch.equal(x, u) and torch.equal(y, v)
    assert torch.equal(wrapped[3][0], data[3][0])


class Killed(Exception):
    pass


@pytest.mark.parametrize("data_class", [GlobalRngAugmented, Batched])
def test_global_rng_augmentation_resumes_exactly_with_any_worker_count(
    tmp_path, data_class, tiny_model, tiny_config
):
    """Uninterrupted with 2 workers == uninterrupted in-process == killed mid-epoch and resumed
    with 2 workers (the case that failed before: max weight difference 0.014)."""
    kw = dict(epochs=3, checkpoint_every=4)
    full = Trainer(tiny_model(), data_class(), tiny_config(output_dir=str(tmp_path / "a"), **kw))
    full.fit()
    workers = Trainer(tiny_model(), data_class(), tiny_config(num_workers=2, **kw))
    workers.fit()

    cfg = tiny_config(output_dir=str(tmp_path / "b"), **kw)
    first = Trainer(tiny_model(), data_class(), cfg)

    def kill_at_step_10(trainer):  # epoch 1, after the checkpoint at step 8
        if trainer.step == 10:
            raise Killed

    first.hooks.append(kill_at_step_10)
    with pytest.raises(Killed):
        first.fit()
    torch.rand(7), random.random()  # a new process: other global states
    second = Trainer(tiny_model(seed=7), data_class(), cfg)
    assert second.fit(resume=True).resumed_from_step == 8
    for k, v in full.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k
        assert torch.equal(workers.model.state_dict()[k], v), k
