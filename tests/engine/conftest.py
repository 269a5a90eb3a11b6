"""Fixtures of the engine tests: factories of a tiny deformable classifier, data and settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchdcn.data import TensorSource
from torchdcn.engine import OptimConfig, ScheduleConfig, TrainConfig
from torchdcn.engine.distributed import set_cpu_threads
from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack


class TinyNet(nn.Module):
    """conv -> v1 deform conv -> v2 deform conv -> mean -> linear: [N, 1, 10, 10] -> [N, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.v1 = DeformConv2dPack(8, 8, 3, padding=1)
        self.v2 = ModulatedDeformConv2dPack(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = F.relu(self.v1(x))
        x = F.relu(self.v2(x))
        return self.fc(x.mean((2, 3)))


def _tiny_data(n: int = 48, seed: int = 0) -> TensorSource:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.rand(n, 1, 10, 10, generator=gen) + 0.5 * y.view(n, 1, 1, 1)  # brightness = class
    return TensorSource(x, y)


def _tiny_config(**kw) -> TrainConfig:
    base = dict(
        epochs=2,
        batch_size=8,
        seed=3,
        optim=OptimConfig("sgd", lr=0.05, weight_decay=1e-4),
        schedule=ScheduleConfig("cosine", warmup_steps=3),
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread per test (tiny ops; several threads only fight on a busy machine)."""
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    set_cpu_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


@pytest.fixture
def tiny_model():
    """``tiny_model(seed=0) -> TinyNet`` initialised from ``seed``."""
    return _tiny_model


@pytest.fixture
def tiny_data():
    """``tiny_data(n=48, seed=0) -> TensorSource`` of ``[n, 1, 10, 10]`` images, 4 classes."""
    return _tiny_data


@pytest.fixture
def tiny_config():
    """``tiny_config(**overrides) -> TrainConfig``: 2 epochs, batch 8, SGD, warm-up + cosine."""
    return _tiny_config
