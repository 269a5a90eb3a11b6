"""Shared by the CLI tests: the commands set the process's thread counts (``--threads``, the
demos); each test gets them back as they were."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def restore_threads():
    """Put torch's and Numba's thread counts back after each test."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])
