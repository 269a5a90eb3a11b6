"""Global state some tests change (deterministic algorithms, the kernels' workspace limit) is put
back after every test, so a test sets what it needs without its own try/finally. Tests marked
``needs_mnist5k`` skip, saying why, where the MNIST sample is not found."""

from __future__ import annotations

import pytest
import torch

from torchdcn.data import DataNotFoundError, find_mnist5k
from torchdcn.ops import set_workspace_limit, workspace_limit


def _has_mnist5k() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_mnist5k") and not _has_mnist5k():
        pytest.skip("needs ../shared/data/mnist5k (or $TORCHDCN_DATA); see data docs")


@pytest.fixture(autouse=True)
def _restore_global_state():
    deterministic, limit = torch.are_deterministic_algorithms_enabled(), workspace_limit()
    yield
    torch.use_deterministic_algorithms(deterministic)
    set_workspace_limit(limit)
