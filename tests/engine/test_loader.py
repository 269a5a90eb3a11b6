"""Data through DataLoader: the sharding batch sampler, the evaluation shards, and exact resume
with worker processes on data that changes every epoch."""

from __future__ import annotations

import pytest
import torch

from torchdcn.data import DistortedDigits, Distortion
from torchdcn.engine import ShardSampler, TrainBatchSampler, Trainer, epoch_batches


def test_batch_sampler_shards_each_global_batch_over_the_processes():
    one = TrainBatchSampler(50, 8, seed=4, rank=0, world_size=1)
    ranks = [TrainBatchSampler(50, 8, seed=4, rank=r, world_size=4) for r in range(4)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = list(one)
        assert single == epoch_batches(50, 8, 4, epoch).tolist() and len(single) == len(one) == 6
        shares = [list(s) for s in ranks]
        for step, batch in enumerate(single):
            assert [i for r in range(4) for i in shares[r][step]] == batch
    one.set_epoch(0)
    epoch0 = list(one)
    one.set_epoch(1)
    assert list(one) != epoch0  # reshuffled every epoch
    one.set_epoch(0, start=4)  # a run resumed after 4 steps of epoch 0
    assert list(one) == epoch0[4:]


def test_batch_sampler_and_shards_refuse_bad_settings():
    with pytest.raises(ValueError, match=r"batch_size 6 .* multiple of the 4 processes"):
        TrainBatchSampler(50, 6, 0, rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        TrainBatchSampler(50, 8, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"start must be in \[0, 6\], got 7"):
        TrainBatchSampler(50, 8, 0, rank=0, world_size=1).set_epoch(0, start=7)
    with pytest.raises(ValueError, match="rank must be in"):
        ShardSampler(10, rank=-1, world_size=2)


def test_evaluation_shards_cover_every_sample_once():
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]


def _digits(n: int = 48) -> DistortedDigits:
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = (torch.rand(n, 28, 28, generator=gen) * 60 + 50 * labels.view(n, 1, 1)).to(torch.uint8)
    dist = Distortion(scale=(0.8, 1.2), rotation=(0.0, 20.0), translate=1.0, canvas=10)
    return DistortedDigits(images, labels, dist, seed=9)


class Killed(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_epoch_dependent_data_and_workers_gives_identical_weights(
    tmp_path, workers, tiny_model, tiny_config
):
    # the images are redrawn every epoch (set_epoch), inside the worker processes when workers > 0
    kw = dict(epochs=3, checkpoint_every=4, num_workers=workers)
    full = Trainer(tiny_model(), _digits(), tiny_config(output_dir=str(tmp_path / "a"), **kw))
    full.fit()
    reference = Trainer(tiny_model(), _digits(), tiny_config(epochs=3))
    reference.fit()  # no workers: the weights do not depend on the worker count

    cfg = tiny_config(output_dir=str(tmp_path / "b"), **kw)
    first = Trainer(tiny_model(), _digits(), cfg)

    def kill_at_step_10(trainer):  # epoch 1, after the checkpoint at step 8
        if trainer.step == 10:
            raise Killed

    first.hooks.append(kill_at_step_10)
    with pytest.raises(Killed):
        first.fit()
    second = Trainer(tiny_model(seed=7), _digits(), cfg)
    result = second.fit(resume=True)
    assert result.resumed_from_step == 8 and result.steps == 18
    for k, v in full.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k
        assert torch.equal(reference.model.state_dict()[k], v), k
