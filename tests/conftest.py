"""Global state some tests change (deterministic algorithms, the kernels' workspace limit) is put
back after every test, so a test sets what it needs without its own try/finally."""

from __future__ import annotations

import pytest
import torch

from torchdcn.ops import set_workspace_limit, workspace_limit


@pytest.fixture(autouse=True)
def _restore_global_state():
    deterministic, limit = torch.are_deterministic_algorithms_enabled(), workspace_limit()
    yield
    torch.use_deterministic_algorithms(deterministic)
    set_workspace_limit(limit)
