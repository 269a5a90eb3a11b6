"""Synchronised BatchNorm in one process: the conversion keeps the tensors and checkpoint keys,
AllReduceBatchNorm is BatchNorm outside a process group, and the layers that would make several
processes differ from one are found. (Two processes: tests/engine/test_ddp.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.engine import TrainConfig, Trainer
from torchdcn.engine.sync_batchnorm import (
    AllReduceBatchNorm,
    batch_statistics_layers,
    convert_sync_batchnorm,
)
from torchdcn.nn import FrozenBatchNorm2d


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)), nn.Flatten(),
        nn.BatchNorm1d(4 * 4 * 4),
    )  # fmt: skip


def test_cpu_conversion_shares_the_tensors_and_keeps_the_keys():
    net = _net().eval()
    params = {n: p for n, p in net.named_parameters()}
    buffers = {n: b for n, b in net.named_buffers()}
    keys = list(net.state_dict())
    out = convert_sync_batchnorm(net, "cpu")
    assert out is net  # children are replaced in place
    kinds = [type(m).__name__ for m in (out[1], out[2][0], out[4])]
    assert kinds == ["AllReduceBatchNorm"] * 3
    assert all(p is params[n] for n, p in out.named_parameters())
    assert all(b is buffers[n] for n, b in out.named_buffers())
    assert list(out.state_dict()) == keys and not out[1].training
    assert isinstance(convert_sync_batchnorm(nn.BatchNorm2d(3), "cpu"), AllReduceBatchNorm)
    # CUDA takes torch's own (building it needs no GPU)
    assert isinstance(convert_sync_batchnorm(_net(), torch.device("cuda"))[1], nn.SyncBatchNorm)
    with pytest.raises(TypeError, match=r"module must be an nn\.Module, got str"):
        convert_sync_batchnorm("net", "cpu")


def test_all_reduce_batchnorm_is_batchnorm_outside_a_process_group():
    plain, synced = nn.BatchNorm2d(5), AllReduceBatchNorm(5)
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 4, 4) * 3 + 1
    for mode in (True, False):
        plain.train(mode), synced.train(mode)
        torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)
    with pytest.raises(ValueError, match=r"expected an \[N, C, \.\.\.\] input, got 1D"):
        synced.train()(torch.zeros(5))


class _KeepsStemInEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.BatchNorm2d(2)
        self.frozen = FrozenBatchNorm2d(2)
        self.head = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
        self.norm = nn.GroupNorm(1, 2)

    def train(self, mode=True):
        super().train(mode)
        self.stem.eval()  # as a detector freezes a pretrained stem
        return self


def test_the_layers_that_use_batch_statistics_are_found_and_modes_restored():
    model = _KeepsStemInEval().eval()
    assert batch_statistics_layers(model) == ["head.1"]
    assert not any(m.training for m in model.modules())
    assert batch_statistics_layers(convert_sync_batchnorm(model, "cpu")) == []
    assert batch_statistics_layers(nn.BatchNorm1d(3)) == ["BatchNorm1d"]


def test_sync_bn_setting(tmp_path):
    assert "sync_bn" not in TrainConfig().fingerprint()  # the checkpoints of earlier runs resume
    assert TrainConfig(sync_bn=True).fingerprint()["sync_bn"] is True
    with pytest.raises(TypeError, match="sync_bn must be True or False, got 'yes'"):
        TrainConfig(sync_bn="yes")
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,)))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    config = TrainConfig(epochs=1, batch_size=4, sync_bn=True, progress=False, device="cpu")
    trainer = Trainer(model, data, config)
    assert type(trainer.model[1]) is nn.BatchNorm2d  # one process: nothing to synchronise
    assert trainer.setting_warnings == []


def test_all_reduce_batchnorm_keeps_float64(monkeypatch):
    """Two processes (the other contributing an empty share): the statistics are computed in
    the input's float64, as BatchNorm2d does (they were rounded to float32)."""
    import torchdcn.engine.sync_batchnorm as sync

    monkeypatch.setattr(sync, "_world", lambda: (0, 2))
    monkeypatch.setattr(sync.dist, "all_reduce", lambda tensor, op=None: None)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 1e3 + 1e4
    plain, synced = nn.BatchNorm2d(3).double(), sync.AllReduceBatchNorm(3).double()
    out = synced(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(synced.running_var, plain.running_var, rtol=1e-12, atol=0)
